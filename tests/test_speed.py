"""The speed levers of the training step keep the numerics (issue 14), checked on the CPU under a bf16 autocast (the
CPU's mirrors CUDA's cast policy for linears): no fp32 copies of LoRA inputs, and self-attention kept through the
checkpointed backward. The op counts come from `benchmarks/audit_step.py`'s dispatch-mode recorder."""
import importlib.util
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import torch
from background import Background
from fastcore.test import test_eq as eq_

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("audit_step", ROOT / "benchmarks" / "audit_step.py")
A = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(A)
TOKENS = 560


def step(**build_kw):
    "Loss and LoRA gradients of one trainer step under CPU bf16 autocast, and the recorded ops."
    cond = build_kw.pop("cond", 0)
    model = A.build(**build_kw)
    rec = A.OpRecorder(model, TOKENS)
    torch.manual_seed(123)                                    # LoRA dropout draws from the global generator
    loss, grads = A.trainer_step(model, A.make_batch(num_cond_latents=cond), recorder=rec)
    rec.remove()
    return loss, grads, rec.records


def lora_casts(records) -> list:
    "Activation-sized dtype casts made inside a LoRA-wrapped linear (its input copied to fp32, and back for lora_A)."
    lora_linears = ("attn.qkv", "attn.proj", "cross_attn.q_linear", "ffn.w1", "ffn.w2", "ffn.w3")
    return [r for r in records if r["act"] and r["op"] == "_to_copy.default" and r["in_dtypes"][0] != r["dtype"]
            and r["module"].removeprefix("blocks.").removesuffix(".lora_A") in lora_linears]


def assert_same(a, b):
    eq_(a[0], b[0])
    eq_(set(a[1]), set(b[1]))
    for n in a[1]: assert torch.equal(a[1][n], b[1][n]), n


def test_lora_input_cast_off_is_exact_and_copies_nothing():
    "Under bf16 autocast, without PEFT's cast: the same loss and LoRA gradients bit for bit, and no activation casts in LoRA."
    on, off = step(lora_cast=True), step(lora_cast=False)
    assert_same(on, off)
    eq_(len(lora_casts(on[2])), 2 * 2 * 6 * 2)               # forward, recompute × 2 blocks × 6 linears × (to fp32, back)
    eq_(lora_casts(off[2]), [])
    backward_casts = lambda records: sum(r["phase"] == "backward" and r["act"] and r["op"] == "_to_copy.default" for r in records)
    eq_(backward_casts(on[2]) - backward_casts(off[2]), 22)   # their gradients' casts (backward ops carry no module)


def test_lora_dropout_keeps_the_cast():
    "bf16 dropout would scale by 1/(1 − p) rounded to bf16: layers with dropout keep PEFT's fp32 cast, so nothing changes."
    x = torch.randn(4096, 64).bfloat16()
    torch.manual_seed(0); fp32 = torch.nn.functional.dropout(x.float(), 0.1, True)
    torch.manual_seed(0); bf16 = torch.nn.functional.dropout(x, 0.1, True)
    assert torch.equal(fp32 == 0, bf16 == 0)                   # the same mask...
    assert not torch.equal(fp32.bfloat16(), bf16)              # ...but not the same values: why the cast stays
    on, off = step(lora_cast=True, dropout=0.1), step(lora_cast=False, dropout=0.1)
    assert_same(on, off)
    assert len(lora_casts(off[2])) > 0


@pytest.mark.parametrize("cond", [0, 1])
def test_keep_attention_same_numbers_half_the_attention(cond):
    "Keeping attention: loss and LoRA gradients bit-identical to recomputing, self-attention's forward depth times, not 2 × depth."
    rec, keep = step(cond=cond), step(keep_attention=True, cond=cond)
    assert_same(rec, keep)
    count = lambda records, phase: sum(r["key_tokens"] == TOKENS for r in records if r["phase"] == phase)
    depth = A.AUDIT_DIT["depth"]
    eq_((count(rec[2], "forward"), count(rec[2], "recompute")), (depth, depth))
    eq_((count(keep[2], "forward"), count(keep[2], "recompute")), (depth, 0))


def test_keep_attention_fp32_and_bsa():
    "Without autocast (fp32, as the trainer on a CPU) and with block-sparse attention the kept path gives the same gradients."
    from longcat_nb.model import TINY_DIT_CONFIG, LongCatVideoTransformer3DModel, checkpoint_keeping_attention
    g = torch.Generator().manual_seed(1)
    inp = dict(hidden_states=torch.randn(1, 16, 4, 8, 8, generator=g), timestep=torch.tensor([500.]),
               encoder_hidden_states=torch.randn(1, 6, 32, generator=g), encoder_attention_mask=torch.ones(1, 6))
    from longcat_nb import kernels
    means, fwd, bwd = kernels._STEPS["gathered"]
    runs = []                                      # the sparse step's forward: kept, it does not run again
    kernels._STEPS["gathered"] = (means, lambda *a: runs.append(1) or fwd(*a), bwd)
    try:
        for backend in ("sdpa", "bsa"):
            grads = []
            for fn in (None, checkpoint_keeping_attention):
                torch.manual_seed(0)
                m = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG).train()
                for p in m.parameters(): p.data.normal_(0, 0.2)
                m.set_attention_backend(backend, sparsity=0.5)
                m.enable_gradient_checkpointing(fn)
                runs.clear()
                m(**inp).sample.square().mean().backward()
                grads.append({n: p.grad for n, p in m.named_parameters()})
                if backend == "bsa":
                    eq_(len(runs), len(m.blocks) * (1 if fn else 2))
            for n in grads[0]: assert torch.equal(grads[0][n], grads[1][n]), (backend, n)
    finally:
        kernels._STEPS["gathered"] = (means, fwd, bwd)


def test_trainer_wires_the_levers(example, tmp_path):
    """`train` keeps attention when checkpoint_attention says so, and sets the LoRA cast from its autocast (on without
    one, on a CPU; off under CUDA's bf16 autocast)."""
    from longcat_nb import training
    from longcat_nb.config import load_config
    seen = {}
    real = training.load_trainable_transformer
    def spy(*a, **kw):
        m = real(*a, **kw)
        seen.update(func=m._gradient_checkpointing_func, cast={l.cast_input_dtype_enabled for l in training.lora_layers(m).values()})
        return m
    losses = {}
    for mode in ("keep", "recompute"):
        cfg = load_config(example)
        cfg.output_dir, cfg.validation_prompt, cfg.report_to = tmp_path / mode, None, "none"
        cfg.max_train_steps, cfg.checkpoint_attention = 2, mode
        cfg.compile_transformer = False                          # eager blocks: the function checkpoints them itself
        with mock.patch.object(training, "load_trainable_transformer", spy):
            losses[mode] = training.train(cfg).losses
        eq_(seen["func"] is training.checkpoint_keeping_attention, mode == "keep")
        eq_(seen["cast"], {not torch.cuda.is_available()})       # CPU: no autocast, PEFT's cast stays
    if torch.cuda.is_available():                                # the backward's kernels may sum in any order
        assert losses["keep"] == pytest.approx(losses["recompute"], rel=1e-3), losses
    else:
        eq_(losses["keep"], losses["recompute"])


def test_profile_script_runs_tiny(tmp_path):
    "benchmarks/profile_step.py --tiny runs the trainer's step per variant; the levers leave the losses bit-identical."
    import json, subprocess, sys
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--tiny", "--steps", "1",
                    "--variants", "before,keep,bare", "--json", str(out)], check=True, capture_output=True)
    runs = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    eq_((runs["before"]["lora_input_cast"], runs["keep"]["lora_input_cast"]), (True, False))
    eq_((runs["before"]["keep_attention"], runs["keep"]["keep_attention"]), (False, True))
    eq_(runs["keep"]["losses"], runs["before"]["losses"])
    for r in runs.values(): assert r["by_kind_ms"]["matmul"] > 0 and r["by_module_ms"]["blocks.attn"] > 0, r


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuDNN / flash SDPA kernels, CUDA autocast)")
def test_cuda_levers_keep_the_numbers():
    "On CUDA under the trainer's autocast: no LoRA casts without PEFT's cast, the fused attention op kept (depth calls, not 2 × depth), same numbers."
    runs = {}
    for lora_cast, keep in ((True, False), (False, False), (False, True)):
        model = A.build(lora_cast=lora_cast, keep_attention=keep).cuda()
        rec = A.OpRecorder(model, TOKENS)
        torch.manual_seed(123)
        loss, grads = A.trainer_step(model, A.make_batch(device="cuda"), recorder=rec)
        rec.remove()
        runs[lora_cast, keep] = loss, grads, rec.records
    depth = A.AUDIT_DIT["depth"]
    count = lambda records, phase: sum(r["key_tokens"] == TOKENS for r in records if r["phase"] == phase)
    eq_((count(runs[False, False][2], "forward"), count(runs[False, False][2], "recompute")), (depth, depth))
    eq_((count(runs[False, True][2], "forward"), count(runs[False, True][2], "recompute")), (depth, 0))
    eq_(lora_casts(runs[False, False][2]), [])
    assert len(lora_casts(runs[True, False][2])) == 2 * 2 * 6 * 2
    ref = runs[True, False]
    for key in ((False, False), (False, True)):
        eq_(runs[key][0], ref[0])                                 # the forward is deterministic
        for n, g in ref[1].items():                               # fused attention backwards may accumulate in any order
            assert (runs[key][1][n] - g).norm() <= 1e-2 * g.norm(), (key, n)


@pytest.mark.parametrize("keep", [False, True])
def test_blocks_trace_whole_for_compile(keep):
    """`compile_transformer` compiles each block; a graph break inside one (a new op dynamo cannot trace) would quietly
    cost speed. Dynamo traces a LoRA-adapted block — fp32 regions, UpcastNorm, bf16 autocast — as ONE graph
    (`fullgraph=True` raises on a break), inside the trainer's checkpointing (plain, or keeping attention), and the
    gradients equal eager's. `aot_eager`: dynamo + AOTAutograd without a C++ compiler (Inductor's code is GPU-tested)."""
    from longcat_nb.model import checkpoint_keeping_attention, compute_autocast
    from test_recompile import lora_model

    def run(compiled):
        m = lora_model(0)
        m.enable_gradient_checkpointing(checkpoint_keeping_attention if keep else None)
        if compiled: m.compile_blocks(backend="aot_eager", fullgraph=True)
        m.train()
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(1, 16, 5, 8, 8, generator=g), torch.randn(1, 16, 32, generator=g)
        with compute_autocast(torch.device("cpu"), "bf16"):
            v = m(x, torch.tensor([[0.0, 500, 500, 500, 500]]), y, torch.ones(1, 16, dtype=torch.long), num_cond_latents=1).sample
        v.float().pow(2).mean().backward()
        return torch.cat([p.grad.flatten() for p in m.parameters() if p.requires_grad])

    torch._dynamo.reset()
    eager, compiled = run(False), run(True)
    assert ((compiled - eager).norm() / eager.norm()).item() < 1e-5


# --- fused elementwise work where blocks are not compiled (`set_fused_elementwise`) ----------------------------------
def fused_step(backend, fp32: bool = False, frames: int = 4, keep: bool = False):
    """Loss and LoRA gradients of the trainer's step (checkpointed; bf16 autocast, or fp32 weights and no autocast) on
    the audit model with its elementwise functions compiled with `backend` (None: eager), `frames` latent frames."""
    model = A.build(keep_attention=keep)
    if fp32: model.float()
    model.set_fused_elementwise(backend)
    b, sigma, drop, noise, empty = A.make_batch()
    b = b | dict(latents=b["latents"][:, :, :frames])
    torch.manual_seed(123)
    return A.trainer_step(model, (b, sigma, drop, noise[:, :, :frames], empty), autocast=not fp32)


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("fp32", [True, False])
def test_fused_elementwise_matches_eager(fp32):
    """Inductor's fused elementwise functions in the trainer's checkpointed step give eager's loss and LoRA gradients:
    fp32 to float rounding (measured: loss equal, gradients ≤ 6e-7 of their norm; asserted 1e-6 and 1e-5), under the
    bf16 autocast within bf16 rounding (measured: loss 3e-6, gradients ≤ 5.4e-3; asserted 1e-4 and 1e-2)."""
    from torch._dynamo.utils import counters
    eager = fused_step(None, fp32)
    counters.clear()
    fused = fused_step("inductor", fp32)
    assert counters["stats"]["unique_graphs"] >= 5, "the fused functions did not compile"
    loss_tol, grad_tol = (1e-6, 1e-5) if fp32 else (1e-4, 1e-2)
    assert abs(fused[0] - eager[0]) <= loss_tol * abs(eager[0]), (fused[0], eager[0])
    worst = max(rel(fused[1][n], g) for n, g in eager[1].items())
    assert worst <= grad_tol, worst


def test_fused_elementwise_compiles_once_for_every_token_count():
    """Dynamic shapes: after the step at two token counts, a third (another bucket) compiles nothing new; keeping
    attention (selective checkpointing) runs the same graphs and gives the same numbers."""
    fused_step("inductor", frames=4)
    fused_step("inductor", frames=3)
    with torch._dynamo.config.patch(error_on_recompile=True):
        plain = fused_step("inductor", frames=2)
        keep = fused_step("inductor", frames=2, keep=True)
    eq_(keep[0], plain[0])
    for n, g in plain[1].items(): assert rel(keep[1][n], g) <= 1e-2, n


def test_fused_elementwise_keeps_no_more_for_the_backward():
    """What autograd saves in one LoRA block's forward (the recompute of the checkpointed trainer) under bf16 autocast,
    by part (`calibrate_memory.saved_bytes`): the compiled functions keep no more than eager in any part (no fp32
    copies), and less in the FFN (the fused gate recomputes its SiLU) and self-attention (qk norm and RoPE fused)."""
    from longcat_nb.model import rope_3d
    spec = importlib.util.spec_from_file_location("calibrate_memory", ROOT / "benchmarks" / "calibrate_memory.py")
    calibration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibration)

    def saved(backend, tokens):
        model = calibration.one_block_model(256, 2, 4).set_fused_elementwise(backend)
        block, g = model.blocks[0], torch.Generator().manual_seed(0)
        x = torch.randn(1, tokens, 256, generator=g).to(torch.bfloat16).requires_grad_()
        y = torch.randn(1, 64, 256, generator=g).to(torch.bfloat16)
        t, rope = torch.randn(1, 2, 512, generator=g), rope_3d((2, 8, tokens // 16), 128)
        with torch.autocast("cpu", torch.bfloat16):
            parts, out = calibration.saved_bytes(block, lambda: block(x, y, t, rope), exclude=[x])
        out.float().sum().backward()
        return parts

    for tokens in (256, 512):
        eager, fused = saved(None, tokens), saved("inductor", tokens)
        eq_(set(fused), set(eager))
        for part, n in fused.items(): assert n <= eager[part], (tokens, part, n, eager[part])
        assert fused["FFN"] < eager["FFN"] and fused["self-attention"] < eager["self-attention"], (fused, eager)


def test_fused_elementwise_inside_compiled_blocks_is_harmless():
    """Compiled blocks and the switch together: dynamo traces each bf16 block whole (fullgraph: no graph break, the
    traced `UpcastNorm` included), the fused functions are not compiled on their own inside them (the block's graph has
    them; the final layer, outside the blocks, compiles its own), and the gradients are the eager ones (aot_eager:
    measured the same bits; asserted 1e-5 of a gradient's norm)."""
    calls = []
    def counting(gm, example_inputs):
        calls.append(gm)
        return gm.forward
    eager = fused_step(None)
    model = A.build()
    model.compile_blocks(backend="aot_eager", fullgraph=True)
    model.set_fused_elementwise(counting)
    torch.manual_seed(123)
    compiled = A.trainer_step(model, A.make_batch())
    torch._dynamo.reset()
    eq_(len(calls), 1)                      # only the final layer's modulate: it is outside the compiled blocks
    assert abs(compiled[0] - eager[0]) <= 1e-6 * abs(eager[0])
    for n, g in eager[1].items(): assert rel(compiled[1][n], g) <= 1e-5, n


ELEMENTWISE_DIR = tempfile.TemporaryDirectory()
ELEMENTWISE = Background([sys.executable, ROOT / "benchmarks" / "bench_elementwise.py", "--tiny", "--steps", "1",
                          "--json", Path(ELEMENTWISE_DIR.name) / "bench.json"])     # queued at collection


def test_bench_elementwise_runs_tiny():
    "benchmarks/bench_elementwise.py --tiny times eager and fused steps of one small block on the CPU, writes JSON."
    import json
    run = ELEMENTWISE.result()
    assert run.returncode == 0, run.stderr[-4000:]
    r = json.loads((Path(ELEMENTWISE_DIR.name) / "bench.json").read_text())
    eq_((r["tokens"], r["hidden"], r["backend"]), (560, 256, "inductor"))
    assert r["eager"]["median_s"] > 0 and r["fused"]["median_s"] > 0 and r["speedup"] > 0
    assert 0 < r["max_grad_rel_diff"] < 1e-2 and r["output_rel_diff"] < 1e-2, r


def test_fused_elementwise_training_and_validation_stay_compiled():
    """A run's variety of calls — training steps at two token counts (grad mode, checkpointed recompute), then
    validation of image-to-video under guidance (no grad, a batch of two, the one-frame conditioning cache) and
    text-to-video without — stays within each function's graph budget (`FUSED_RECOMPILE_LIMIT`; dynamo's default 8
    would send `modulate` back to eager), and the fused videos are the eager ones (aot_eager, the same ops: 1e-5)."""
    import numpy as np
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from longcat_nb import model as M
    from longcat_nb.sampling import LongCatVideoPipeline
    from longcat_nb.tiny import tiny_checkpoint
    torch._dynamo.reset()
    for frames in (4, 3): fused_step("aot_eager", frames=frames)
    pipe = LongCatVideoPipeline.from_pretrained(tiny_checkpoint(), torch_dtype=torch.float32, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    kw = dict(width=64, height=48, num_frames=9, num_inference_steps=2, output_type="latent")
    videos = {}
    for backend in (None, "aot_eager"):
        pipe.transformer.set_fused_elementwise(backend)
        i2v = pipe("a red ball", image=image, guidance_scale=4.0, generator=torch.Generator().manual_seed(0), **kw)
        t2v = pipe("a red ball", guidance_scale=1.0, generator=torch.Generator().manual_seed(0), **kw)
        videos[backend] = i2v.frames, t2v.frames
    for fn in (M.silu_mul, M.rms_norm_fp32, M.qk_norm_rope, M.modulate, M.gated_add):
        graphs = len(_debug_get_cache_entry_list(fn.__code__))
        assert graphs < torch._dynamo.config.recompile_limit, (fn.__name__, graphs)       # none fell back to eager
    for fused, eager in zip(videos["aot_eager"], videos[None]):
        torch.testing.assert_close(fused, eager, atol=1e-5, rtol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("streams", [dict(activation_offload=True), dict(musubi_blocks_to_swap=1), {}])
def test_streamed_runs_compile_in_process(streams):
    """The trainer's model setup (`make_trainable`) compiles in-process for runs whose blocks stream (inductor's pool of
    compile workers held 8 GiB of host RAM in a 16 GB plan's run) and leaves the pool to the others."""
    import torch._inductor.config as inductor_config
    from longcat_nb.config import parse_config
    from longcat_nb.model import TINY_DIT_CONFIG, LongCatVideoTransformer3DModel
    from longcat_nb.training import make_trainable
    with mock.patch.object(inductor_config, "compile_threads", 7):
        make_trainable(LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG), parse_config(streams))
        eq_(inductor_config.compile_threads, 1 if streams else 7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (a full-width block: 37,440 tokens)")
def test_levers_at_full_width_within_bf16_noise_cuda(monkeypatch):
    """One released-width block at 832×480×93 as the trainer runs it on CUDA (benchmarks/bench_levers.py, one step
    each): the LoRA epilogue with the Triton q/k norm + RoPE, and those with the rest of the elementwise work fused by
    inductor, give the plain path's output and LoRA gradients within bf16 noise."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_levers as L
    device = torch.device("cuda")
    model = L.build(4096, 32, 16, device)
    args = L.inputs(model, (24, 30, 52), 512, device)
    res = L.block_variants(model, args, ["plain", "both", "fused_inductor_both"], device, 1, "inductor", 30 * 52)
    for name in ("both", "fused_inductor_both"):
        assert res[name]["output_rel_diff"] < 1e-2 and res[name]["max_grad_rel_diff"] < 2e-2, (name, res[name])
