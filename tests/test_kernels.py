"""Block-sparse attention in the model (CPU: the gathered kernel) and FlexAttention against the fp32 reference (CUDA);
our Triton kernel (`triton_block_attention`) on the CPU under Triton's interpreter, in a fresh process.

The kernel-level CPU checks (selection, reorder, gathered kernel vs reference, cond rule, sparsity 0 = dense) live in
nbs/09_kernels.ipynb; here: the model's forced 'bsa' path, gradient checkpointing, compiled blocks, and the GPU kernel.
"""
import importlib.util, itertools, json, math, os, subprocess, sys, tempfile
from pathlib import Path

import pytest
import torch
from background import Background
from fastcore.test import test_close as close_, test_eq as eq_, test_fail as fail_

from longcat_nb import kernels
from longcat_nb.kernels import block_sparse_attention
from longcat_nb.testing import block_sparse_reference, output_and_grads
from longcat_nb.model import TINY_DIT_CONFIG, LongCatVideoTransformer3DModel

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (FlexAttention has no CPU backward)")


def tiny(seed=0, device="cpu"):
    torch.manual_seed(seed)
    model = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG)
    for p in model.parameters(): p.data.normal_(0, 0.2)
    return model.to(device)


def inputs(device="cpu", T=4):
    "Latents whose token grid (T, 4, 8) is two 4×4×4 chunks per 4 frames."
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, T, 8, 16, generator=g).to(device),
                timestep=torch.tensor([500.0]).to(device),
                encoder_hidden_states=torch.randn(1, 1, 8, 32, generator=g).to(device))


def run(model, backend, **bsa):
    model.set_attention_backend(backend, **bsa)
    return model(**inputs(next(model.parameters()).device)).sample


def test_model_bsa_sparsity0_is_dense_and_sparse_differs():
    model = tiny()
    with torch.no_grad():
        dense = run(model, "sdpa")
        close_(run(model, "bsa", sparsity=0.0), dense, eps=1e-5)
        assert (run(model, "bsa", sparsity=0.5) - dense).abs().max() > 1e-3, "keeping 1 of 2 chunks must change the output"


def test_model_bsa_cond_frames_ignore_noise_frames():
    model, inp = tiny(), inputs(T=8)
    model.set_attention_backend("bsa", sparsity=0.5)
    other = inp["hidden_states"].clone()
    other[:, :, 1:] = torch.randn_like(other[:, :, 1:])
    t = torch.tensor([[0.0] + [500.0] * 7])
    with torch.no_grad():
        base = model(**inp | dict(timestep=t, num_cond_latents=1)).sample
        moved = model(**inp | dict(hidden_states=other, timestep=t, num_cond_latents=1)).sample
    close_(moved[:, :, :1], base[:, :, :1], eps=1e-5)


def test_model_bsa_pads_a_grid_that_does_not_divide():
    "T = 3 latent frames (3×4×8 tokens, padded to two 4×4×4 chunks): block-sparse runs; sparsity 0 equals sdpa."
    model = tiny()
    inp = inputs() | dict(hidden_states=torch.randn(1, 16, 3, 8, 16))
    with torch.no_grad():
        model.set_attention_backend("sdpa")
        dense = model(**inp).sample
        model.set_attention_backend("bsa", sparsity=0.0)
        close_(model(**inp).sample, dense, eps=1e-5)
        model.set_attention_backend("bsa", sparsity=0.5)
        assert (model(**inp).sample - dense).abs().max() > 1e-3, "keeping 1 of 2 chunks must change the output"


def test_model_bsa_padded_grads_equal_sdpa_at_sparsity0():
    "The whole model on a padded grid (3×4×8), sparsity 0: every parameter's gradient equals dense attention's."
    inp = inputs() | dict(hidden_states=torch.randn(1, 16, 3, 8, 16, generator=torch.Generator().manual_seed(2)))
    grads = []
    for backend in ("sdpa", "bsa"):
        model = tiny()
        model.set_attention_backend(backend, sparsity=0.0)
        model.requires_grad_(True)
        model(**inp).sample.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    eq_(grads[0].keys(), grads[1].keys())
    for n, g in grads[0].items(): close_(grads[1][n], g, eps=1e-5)


def test_train_one_step_with_bsa_on_a_padded_grid(example, tmp_path, capsys, monkeypatch):
    """`train` with attention_implementation "bsa" on the example clips (9 frames, 64×64: token grid 3×4×4, padded to
    a 4×4×4 chunk inside the kernel): the sparse path runs (not a dense fallback), one finite step, a LoRA file."""
    from longcat_nb import model as model_module
    from longcat_nb.config import load_config
    from longcat_nb.training import train
    monkeypatch.setattr(model_module, "_announced", set())
    cfg = load_config(example)
    cfg.output_dir, cfg.validation_prompt, cfg.report_to = tmp_path, None, "none"
    cfg.max_train_steps, cfg.attention_implementation, cfg.bsa_sparsity = 1, "bsa", 0.5
    result = train(cfg)
    out = capsys.readouterr().out
    assert "attention: block-sparse for token grid 3×4×4" in out, out
    assert "dense sdpa" not in out, out
    assert result.steps == 1 and all(math.isfinite(x) for x in result.losses), result
    assert (tmp_path / "lora_peft.safetensors").is_file()


def test_model_bsa_gradient_checkpointing_same_grads():
    grads = []
    for ckpt in (False, True):
        model = tiny()
        model.set_attention_backend("bsa", sparsity=0.5)
        if ckpt: model.enable_gradient_checkpointing()
        model.blocks[0].attn.qkv.weight.requires_grad_(True)
        model(**inputs()).sample.square().mean().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    close_(grads[1], grads[0], eps=1e-5)


def test_train_832x480_with_bsa_warns_below_720p(tmp_path, capsys, monkeypatch):
    """`train` on an 832×480 bucket (token grid 3×30×52: two padded rows of tokens per chunk column) with
    attention_implementation "bsa": block-sparse runs, one finite step, and one warning that the release used
    block-sparse attention only for its 720p refinement."""
    from longcat_nb import model as model_module
    from longcat_nb.config import load_config
    from longcat_nb.tiny import make_example_dataset, tiny_checkpoint
    from longcat_nb.training import train
    monkeypatch.setattr(model_module, "_announced", set())
    cfg = load_config(make_example_dataset(tmp_path / "data", i2v=False, n_clips=1, size=(832, 480),
                                           checkpoint=tiny_checkpoint(), max_train_steps=1))
    cfg.output_dir, cfg.validation_prompt, cfg.report_to = tmp_path / "out", None, "none"
    cfg.attention_implementation, cfg.bsa_sparsity = "bsa", 0.5
    result = train(cfg)
    said = capsys.readouterr()
    assert "attention: block-sparse for token grid 3×30×52" in said.out, said.out
    assert said.err.count("the release used block-sparse attention only for its 720p refinement") == 1, said.err
    assert result.steps == 1 and all(math.isfinite(x) for x in result.losses), result


def test_model_bsa_compiled_blocks_cpu():
    """compile_blocks with fullgraph=True (no graph break allowed) through aot_eager (dynamo + autograd tracing, no C++
    build) runs the sparse path — a padded grid, the op — like eager: the output and every parameter's gradient."""
    inp = inputs() | dict(hidden_states=torch.randn(1, 16, 3, 8, 16, generator=torch.Generator().manual_seed(3)))
    results = []
    for compiled in (False, True):
        model = tiny()
        model.set_attention_backend("bsa", sparsity=0.5)
        model.requires_grad_(True)
        if compiled:
            torch._dynamo.reset()
            model.compile_blocks(backend="aot_eager", fullgraph=True)
        out = model(**inp).sample
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch._dynamo.reset()
    close_(results[1][0], results[0][0], eps=1e-5)
    for n, g in results[0][1].items(): close_(results[1][1][n], g, eps=1e-5)


def test_flex_forward_padded_cpu():
    "FlexAttention's block mask with padded keys (partial tiles, mask_mod): compiled forward on the CPU vs reference."
    from longcat_nb.testing import masked_attention_reference
    g = torch.Generator().manual_seed(0)
    qc, kc, vc = (torch.randn(1, 2, 256, 16, generator=g) for _ in range(3))
    real = torch.rand(256, generator=g) < 0.6
    real[::64] = True
    for r in (None, real):
        kept = kernels.select_blocks(kernels.block_scores(qc, kc, 64, r), 0.5, None, 16)
        with torch.no_grad(): got = kernels.flex_block_attention(qc, kc, vc, kept, r)
        close_(got, masked_attention_reference(qc, kc, vc, kept.mask(4), real=r), eps=1e-5)


@cuda
@pytest.mark.parametrize("sparsity,cdf,num_cond", [(0.9375, None, 0), (None, 0.9, 0), (0.9375, 0.5, 0), (0.9375, None, 512)])
def test_flex_matches_fp32_reference_bf16(sparsity, cdf, num_cond):
    "32 heads × 128, bf16 FlexAttention path vs the fp32 dense-under-mask reference: output and dq, dk, dv within 1e-2."
    grid = (8, 16, 32)                                                         # 4,096 tokens, 64 chunks
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 32, math.prod(grid), 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    got = output_and_grads(lambda q, k, v: block_sparse_attention(q, k, v, grid, sparsity, cdf, num_cond=num_cond), q, k, v)
    ref = output_and_grads(lambda q, k, v: block_sparse_reference(q, k, v, grid, sparsity, cdf, num_cond=num_cond),
                           q.float(), k.float(), v.float())
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        err = ((a - b).norm() / b.norm()).item()
        print(f"flex vs reference sparsity={sparsity} cdf={cdf} num_cond={num_cond} {name}: rel {err:.2e}")
        assert err < 1e-2, (name, err)


@cuda
def test_model_bsa_cuda_compiled_checkpointed_matches_eager():
    "Tiny model on CUDA, forced bsa (FlexAttention): compiled blocks + gradient checkpointing give eager's grads."
    grads = []
    for compiled in (False, True):
        model = tiny(device="cuda")
        model.set_attention_backend("bsa", sparsity=0.5)
        model.enable_gradient_checkpointing()
        if compiled: model.compile_blocks()
        model.blocks[0].attn.qkv.weight.requires_grad_(True)
        model(**inputs("cuda")).sample.square().mean().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    close_(grads[1], grads[0], eps=2e-3)


# --- our Triton kernel on the CPU (Triton's interpreter) -----------------------------------------------------------
# Triton reads TRITON_INTERPRET once, at its first import, and this process has imported it compiled (torchao does),
# so the cases run in one fresh interpreter process. Grid 8×8×8 = 512 tokens = 8 chunks of 64, 2 heads.
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (pyproject installs it on Linux, so CI runs these)")

TRITON_CASES = {  # name: (sparsity, cdf_threshold, head_dim, dtype, chunks per step (fwd, dq, dk/dv), head 1 keeps all,
                 #        padded: the 7×6×6 grid in 8 chunks of 4×4×4 (else 8×8×8), v a strided view as from qkv,
                 #        tma: chunks loaded as boxes through tensor descriptors, packed: the other side's chunks
                 #        read from a chunk-major copy)
    "topk_even_fp32_d64": (0.5, None, 64, "float32", 2, False, False, 0, 0),        # 4 kept of 8
    "topk_odd_fp32_d128": (0.625, None, 128, "float32", 2, False, False, 0, 0),     # 3 kept: the last pair is half masked
    "cdf_fp32_d64": (None, 0.6, 64, "float32", 2, False, False, 0, 0),              # counts vary per query chunk
    "topk_odd_dense_head_fp32_d64": (0.625, None, 64, "float32", 2, True, False, 0, 0),
    "topk_odd_bf16_d128": (0.625, None, 128, "bfloat16", 2, False, False, 0, 0),
    "cdf_dense_head_bf16_d64": (None, 0.6, 64, "bfloat16", 2, True, False, 0, 0),
    "topk_odd_step1_fp32_d64": (0.625, None, 64, "float32", 1, False, False, 0, 0),  # one chunk per iteration
    "cdf_step4_fp32_d64": (None, 0.6, 64, "float32", 4, False, False, 0, 0),         # four: 256-wide tiles
    "topk_odd_padded_fp32_d64": (0.625, None, 64, "float32", 1, False, True, 0, 0),
    "cdf_padded_step2_fp32_d64": (None, 0.6, 64, "float32", 2, True, True, 0, 0),
    "topk_padded_bf16_d128": (0.5, None, 128, "bfloat16", 1, False, True, 0, 0),
    "topk_odd_tma_fp32_d64": (0.625, None, 64, "float32", 1, False, False, 1, 0),
    "cdf_dense_head_padded_tma_fp32_d64": (None, 0.6, 64, "float32", 1, True, True, 1, 0),   # boxes past the grid's edge
    "topk_padded_tma_bf16_d128": (0.5, None, 128, "bfloat16", 1, False, True, 1, 0),
    "topk_odd_packed_fp32_d64": (0.625, None, 64, "float32", 1, False, False, 0, 1),
    "cdf_dense_head_padded_packed_step2_fp32_d64": (None, 0.6, 64, "float32", 2, True, True, 0, 1),
    "topk_padded_packed_bf16_d128": (0.5, None, 128, "bfloat16", 1, False, True, 0, 1),
}

TRITON_SCRIPT = r"""
import json, sys, torch
from longcat_nb import kernels as K
from longcat_nb import testing as T
out = dict(env_picks_triton=K._sparse_kernel(None, torch.device("cpu")) == "triton")
K._bsa_kernels(True)                                 # the interpreted kernels call `_bsa_box` by name: count its loads
box_calls, box = [], K._bsa_box
K._bsa_box = lambda *a: box_calls.append(1) or box(*a)
rel = lambda a, b: ((a - b).norm() / b.norm()).item()
for name, (sp, cdf, d, dtype, step, dense_head, padded, tma, packed) in json.loads(sys.argv[1]).items():
    g = torch.Generator().manual_seed(0)
    shape = (7, 6, 6) if padded else (8, 8, 8)
    mean = lambda: 0.5 * torch.randn(1, 2, 8, 1, d, generator=g).expand(-1, -1, -1, 64, -1).reshape(1, 2, 512, d)
    raster = lambda x: K.from_chunks(x, shape).to(getattr(torch, dtype))   # chunk means apart: a clear selection
    q, k = (raster(torch.randn(1, 2, 512, d, generator=g) + mean()) for _ in range(2))
    v = raster(torch.randn(1, 2, 512, d, generator=g) + mean()).transpose(1, 2).contiguous().transpose(1, 2)
    real, chunked = K.real_tokens(shape), lambda x: K.to_chunks(x.float(), shape)
    keep = K.select_blocks(K.block_scores(chunked(q), chunked(k), 64, real), sp, cdf, d).mask(8)
    if dense_head: keep[:, 1] = True
    opts = dict(chunks_per_step=step, dkdv_chunks_per_step=step, tma=tma, packed=packed)
    kept = K.Kept.from_mask(keep)
    boxes = len(box_calls)
    got = T.output_and_grads(lambda q, k, v: K.triton_block_attention(q, k, v, kept, shape, kernel_options=opts),
                             q, k, v)
    ref_fn = lambda q, k, v: K.from_chunks(T.masked_attention_reference(chunked(q), chunked(k), chunked(v), keep,
                                                                        real=real), shape)
    ref = T.output_and_grads(ref_fn, q.float(), k.float(), v.float())
    out[name] = dict(zip(("out", "dq", "dk", "dv"), map(rel, got, ref)), counts=sorted(set(keep.sum(-1).flatten().tolist())),
                     boxes=len(box_calls) - boxes, kept=int(keep.sum()))
grid = (8, 8, 8)                                     # the whole path, raster order, with 1 conditioning frame (64 tokens)
q, k, v = (torch.randn(1, 2, 512, 64, generator=torch.Generator().manual_seed(1)) for _ in range(3))
got = T.output_and_grads(lambda q, k, v: K.block_sparse_attention(q, k, v, grid, 0.625, num_cond=64), q, k, v)
ref = T.output_and_grads(lambda q, k, v: T.block_sparse_reference(q, k, v, grid, 0.625, num_cond=64), q, k, v)
out["whole_path_cond"] = dict(zip(("out", "dq", "dk", "dv"), map(rel, got, ref)))
compiled = torch.compile(lambda q, k, v: K.block_sparse_attention(q, k, v, grid, 0.625), backend="aot_eager")
got = T.output_and_grads(compiled, q, k, v)                         # as compiled model blocks call it
ref = T.output_and_grads(lambda q, k, v: T.block_sparse_reference(q, k, v, grid, 0.625), q, k, v)
out["whole_path_compiled"] = dict(zip(("out", "dq", "dk", "dv"), map(rel, got, ref)))
grid = (3, 6, 10)                  # padded to 4×8×12 inside: top-k, CDF with a conditioning frame, sparsity 0 = dense
q, k, v = (torch.randn(1, 2, 180, 32, generator=torch.Generator().manual_seed(2)) for _ in range(3))
for tag, sp, cdf, c in [("topk", 0.5, None, 0), ("cdf_cond", None, 0.5, 60)]:
    got = T.output_and_grads(lambda q, k, v: K.block_sparse_attention(q, k, v, grid, sp, cdf, num_cond=c), q, k, v)
    ref = T.output_and_grads(lambda q, k, v: T.block_sparse_reference(q, k, v, grid, sp, cdf, num_cond=c), q, k, v)
    out[f"padded_{tag}"] = dict(zip(("out", "dq", "dk", "dv"), map(rel, got, ref)))
got = T.output_and_grads(lambda q, k, v: K.block_sparse_attention(q, k, v, grid, 0.0), q, k, v)
ref = T.output_and_grads(torch.nn.functional.scaled_dot_product_attention, q, k, v)
out["padded_sparsity0_dense"] = dict(zip(("out", "dq", "dk", "dv"), map(rel, got, ref)))
torch._dynamo.reset()
fn = lambda q, k, v: K.block_sparse_attention(q, k, v, grid, 0.5)
got = T.output_and_grads(torch.compile(fn, fullgraph=True, backend="aot_eager"), q, k, v)
out["padded_fullgraph"] = dict(zip(("out", "dq", "dk", "dv"), map(rel, got, T.output_and_grads(fn, q, k, v))))
# tuning: no kernel options → each candidate timed once on the op's own inputs (a stand-in timer here: the fastest is
# (8, 2, 2, 1, 1, 0), one fails to build), the choice kept in the tuning file; a fresh process state reads it back
K.TUNE_DEVICES, timed = ("cuda", "cpu"), []
def fake_timer(fn):
    timed.append(fn.args[0])
    if fn.args[0] == [4, 3, 1, 1, 1, 0, 0]: raise RuntimeError("out of resources")
    fn()
    return 1.0 if fn.args[0] == [8, 2, 2, 1, 1, 0, 0] else 2.0
K._timer = fake_timer
fn = lambda q, k, v: K.block_sparse_attention(q, k, v, grid, 0.5, kernel="triton")
got = T.output_and_grads(fn, q, k, v)
ref = T.output_and_grads(lambda q, k, v: T.block_sparse_reference(q, k, v, grid, 0.5), q, k, v)
first = len(timed)
K._TUNED = None
T.output_and_grads(fn, q, k, v)
out["tuning"] = dict(zip(("out", "dq", "dk", "dv"), map(rel, got, ref)), timed=first, timed_again=len(timed) - first,
                     kept=json.loads(K.tuning_file().read_text()),
                     times={key: sorted(t.values()) for key, t in K.TUNING_TIMES.items()})
print(json.dumps(out))
"""


# the interpreted cases and bench_bsa.py --smoke, queued at collection (tests/background.py)
TUNING_DIR, BENCH_DIR = tempfile.TemporaryDirectory(), tempfile.TemporaryDirectory()
BENCH_JSON = Path(BENCH_DIR.name) / "results" / "bsa_whole_path_cpu_2026-12-05.json"
BENCH_JSON.parent.mkdir()
TRITON_JOB, BENCH_JOB = (None, None) if importlib.util.find_spec("triton") is None else (
    Background([sys.executable, "-c", TRITON_SCRIPT, json.dumps(TRITON_CASES)],
               env=os.environ | dict(TRITON_INTERPRET="1", LONGCAT_BSA_KERNEL="triton",
                                     LONGCAT_NB_TUNING=str(Path(TUNING_DIR.name) / "bsa_tuning.json"))),
    Background([sys.executable, "benchmarks/bench_bsa.py", "--smoke", "--json", BENCH_JSON],
               env=os.environ | dict(TRITON_INTERPRET="1", LONGCAT_NB_TUNING=str(Path(BENCH_DIR.name) / "tuning.json"))))


@pytest.fixture(scope="module")
def triton_cpu():
    "Every case's relative errors (output, dq, dk, dv) from one fresh TRITON_INTERPRET=1 process, kernel switched by env."
    r = TRITON_JOB.result()
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("name", list(TRITON_CASES))
def test_triton_kernel_matches_fp32_reference_cpu(triton_cpu, name):
    """Forward and dq, dk, dv against the fp32 masked reference (bf16: the interpreter rounds toward zero, so 1.5e-2);
    with `tma` every kept chunk is read as one box (`packed`: from chunk-major copies, no box)."""
    sp, cdf, d, dtype, step, dense_head, padded, tma, packed = TRITON_CASES[name]
    errs = triton_cpu[name]
    eq_(errs["boxes"], 6 * errs["kept"] if tma else 0)   # with tma every kept pair loads by box: k, v (fwd, dq), q, do
    if sp == 0.625: assert 3 in errs["counts"], errs["counts"]          # an odd count really occurs
    if dense_head: assert 8 in errs["counts"], errs["counts"]           # a head that keeps every chunk (= dense)
    if cdf: assert len(errs["counts"]) > 1, errs["counts"]              # CDF: counts differ between query chunks
    tol = 1e-4 if dtype == "float32" else 1.5e-2
    for what in ("out", "dq", "dk", "dv"): assert errs[what] < tol, (name, what, errs)


@needs_triton
def test_triton_kernel_env_switch_and_whole_path_cpu(triton_cpu):
    """LONGCAT_BSA_KERNEL=triton switches block_sparse_attention to it; the whole path (cond frame; under torch.compile)
    matches the reference."""
    assert triton_cpu["env_picks_triton"]
    for what, err in triton_cpu["whole_path_cond"].items(): assert err < 1e-4, (what, err)
    for what, err in triton_cpu["whole_path_compiled"].items(): assert err < 1e-4, ("torch.compile", what, err)


@needs_triton
def test_triton_whole_path_padded_grid_cpu(triton_cpu):
    """A 3×6×10 grid (padded to 4×8×12 inside): top-k, and CDF with a conditioning frame, match the fp32 reference;
    sparsity 0 equals dense SDPA; torch.compile(fullgraph=True) through the op equals eager — output, dq, dk, dv."""
    for case in ("padded_topk", "padded_cdf_cond", "padded_sparsity0_dense", "padded_fullgraph"):
        for what, err in triton_cpu[case].items(): assert err < 1e-4, (case, what, err)


@needs_triton
def test_triton_launch_settings_tuned_once_and_kept(triton_cpu):
    """Without kernel options the op times every candidate once on its own inputs, skips one that fails to build,
    keeps the fastest in the tuning file under the shape's key, and reads it back instead of tuning again; the tuned
    launch still matches the reference."""
    r = triton_cpu["tuning"]
    eq_(r["timed"], len(kernels.TUNING_CANDIDATES))
    eq_(r["timed_again"], 0)
    eq_(list(r["kept"].values()), [[8, 2, 2, 1, 1, 0, 0]])
    assert next(iter(r["kept"])).startswith("cpu|float32|d32|bh2|3x6x10x4x4x4|"), r["kept"]
    eq_(r["times"], {next(iter(r["kept"])): [1.0] + [2.0] * (len(kernels.TUNING_CANDIDATES) - 2)})  # all but the failed
    for what in ("out", "dq", "dk", "dv"): assert r[what] < 1e-4, (what, r)


def test_tuning_entries_from_before_a_setting_are_tuned_again(tmp_path, monkeypatch):
    """A tuning file written before `tma` or `packed` was a setting (five or six values an entry) is not launched
    with: those entries are dropped on reading (the shape tunes again), current ones kept."""
    path = tmp_path / "bsa_tuning.json"
    path.write_text(json.dumps({"old": [8, 2, 2, 1, 1], "older": [4, 2, 1, 1, 1, 1], "new": [4, 2, 1, 1, 1, 0, 1]}))
    monkeypatch.setenv("LONGCAT_NB_TUNING", str(path))
    monkeypatch.setattr(kernels, "_TUNED", None)
    eq_(kernels._tuned(), {"new": [4, 2, 1, 1, 1, 0, 1]})


def test_bsa_kernel_choice(monkeypatch):
    """The named kernel ('auto'/None: `CUDA_AUTO_KERNEL` on CUDA, gathered elsewhere); LONGCAT_BSA_KERNEL, read at each
    call, overrides it; an unknown name says the choices and where it came from."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("LONGCAT_BSA_KERNEL", raising=False)
    eq_(kernels._sparse_kernel(None, cpu), "gathered")
    eq_(kernels._sparse_kernel("auto", gpu), kernels.CUDA_AUTO_KERNEL)
    eq_(kernels._sparse_kernel("triton", cpu), "triton")
    fail_(lambda: kernels._sparse_kernel("fast", cpu), contains="'fast' (bsa_kernel)")
    monkeypatch.setenv("LONGCAT_BSA_KERNEL", "triton")
    eq_(kernels._sparse_kernel(None, gpu), "triton")
    eq_(kernels._sparse_kernel("flex", gpu), "triton")
    monkeypatch.setenv("LONGCAT_BSA_KERNEL", "fast")
    fail_(lambda: kernels._sparse_kernel(None, cpu), contains="(environment variable LONGCAT_BSA_KERNEL)")


def test_config_kernel_reaches_the_attention(monkeypatch):
    "bsa_kernel / bsa_kernel_options from the config: training hands them to the model, its plan calls that kernel."
    from longcat_nb.config import parse_config
    from longcat_nb.model import plan_attention
    from longcat_nb.training import make_trainable
    monkeypatch.delenv("LONGCAT_BSA_KERNEL", raising=False)
    cfg = parse_config(dict(attention_implementation="bsa", bsa_kernel="gathered", bsa_kernel_options={"num_warps": 8}))
    model = make_trainable(tiny(), cfg)
    plan = plan_attention(model.attention_implementation, (4, 4, 8), torch.device("cpu"), model.config.bsa_params)
    eq_((plan.kernel, plan.kernel_options), ("gathered", (("num_warps", 8),)))
    called = []
    means, fwd, bwd = kernels._STEPS["gathered"]
    monkeypatch.setitem(kernels._STEPS, "gathered", (means, lambda *a: called.append(1) or fwd(*a), bwd))
    with torch.no_grad(): model(**inputs())
    assert called, "the configured kernel did not run"


@needs_triton
def test_triton_kernel_cpu_without_interpreter_says_how():
    "In a process whose triton was imported compiled (this one: torchao imports it), CPU tensors get the fix in words."
    import triton  # noqa: F401  (what torchao already did)
    from triton.runtime.interpreter import InterpretedFunction
    if isinstance(triton.language.zeros, InterpretedFunction): pytest.skip("this process runs triton interpreted")
    q = torch.randn(1, 1, 128, 64)
    kept = kernels.Kept.from_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool))
    fail_(lambda: kernels.triton_block_attention(q, q, q, kept, (1, 1, 128), (1, 1, 64)),
          contains="start Python with TRITON_INTERPRET=1")


@cuda
@needs_triton
@pytest.mark.parametrize("sparsity,cdf,num_cond,read", [(0.9375, None, 0, None), (None, 0.9, 0, None),
                                                        (0.9375, None, 512, None), (0.9375, None, 512, "tma"),
                                                        (None, 0.9, 0, "tma"), (0.9375, None, 512, "packed"),
                                                        (None, 0.9, 0, "packed")])
def test_triton_matches_fp32_reference_bf16_cuda(sparsity, cdf, num_cond, read):
    """32 heads × 128, bf16, our Triton kernel through the whole path vs the fp32 reference: within 1e-2 (tuned launch
    settings, chunks loaded as boxes through TMA, or read from chunk-major copies)."""
    grid = (8, 16, 32)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 32, math.prod(grid), 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    opts = None if read is None else {read: 1}
    got = output_and_grads(lambda q, k, v: block_sparse_attention(q, k, v, grid, sparsity, cdf, num_cond=num_cond,
                                                                  kernel="triton", kernel_options=opts), q, k, v)
    ref = output_and_grads(lambda q, k, v: block_sparse_reference(q, k, v, grid, sparsity, cdf, num_cond=num_cond),
                           q.float(), k.float(), v.float())
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        err = ((a - b).norm() / b.norm()).item()
        print(f"triton vs reference sparsity={sparsity} cdf={cdf} num_cond={num_cond} read={read} {name}: rel {err:.2e}")
        assert err < 1e-2, (name, err)


@needs_triton
def test_triton_kernels_compile_for_h200_without_spills():
    """bf16, head dim 128, default options: the forward, dq and dk/dv kernels, without and with padded keys, with rows
    loaded one by one, as chunk boxes (`tma`: TMA bulk-tensor copies) and from chunk-major copies (`packed`), compile for sm_90 (Triton's bundled ptxas; no
    GPU needed) and keep every value in registers (cuobjdump: no stack). Not a speed measurement."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.interpreter import InterpretedFunction
    if isinstance(triton.language.zeros, InterpretedFunction): pytest.skip("this process runs triton interpreted")
    _, fwd, _, dkdv, dq = kernels._bsa_kernels(False)
    opts, tl = kernels.kernel_settings("triton"), triton.language
    cx = dict(D=128, BLOCK=64, CT=4, CH=4, CW=4, PREC="tf32", IN=tl.bfloat16, DOT=tl.bfloat16, PAD=False, TMA=False,
              PACKED=False)
    fp32 = dict(LSE="*fp32", DELTA="*fp32", qk_scale="fp32", sm_scale="fp32")
    i32, bf16 = {"CNT", "IDX", "ORDER", "OFF", "QIDX"}, {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}
    strides = {f"s{t}{a}" for t in "qkvod" for a in "bhn"}
    cuobjdump = os.path.join(triton.__path__[0], "backends", "nvidia", "bin", "cuobjdump")
    launches = [(fwd, opts["chunks_per_step"], opts["num_stages"]), (dq, opts["chunks_per_step"], opts["num_stages"]),
                (dkdv, opts["dkdv_chunks_per_step"], opts["dkdv_num_stages"])]
    reads = ((False, False), (True, False), (False, True))                     # rows, TMA boxes, packed copies
    for (fn, steps, stages), pad, (tma, packed) in itertools.product(launches, (False, True), reads):
        c = {n: v for n, v in (cx | dict(TILE=64 * steps, PAD=pad, TMA=tma, PACKED=packed)).items() if n in fn.arg_names}
        kind = lambda n: fp32.get(n) or ("*i32" if n in i32 else "*bf16" if n in bf16 else "i32")   # the rest: ints
        sig = {n: "constexpr" if n in c else kind(n) for n in fn.arg_names}
        # pointers and strides aligned to 16, as Triton's launcher specialises them at full size (d = 128)
        aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
                   if sig[n].startswith("*") or n in strides}
        compiled = triton.compile(ASTSource(fn, sig, c, aligned), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=opts["num_warps"], num_stages=stages))
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"longcat_{fn.__name__}_{os.getpid()}.cubin")
        with open(path, "wb") as f: f.write(compiled.asm["cubin"])
        usage = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        os.remove(path)
        assert "wgmma" in compiled.asm["ptx"], (fn.__name__, pad, tma)      # Hopper tensor-core MMAs
        assert ("cp.async.bulk.tensor" in compiled.asm["ptx"]) == tma, (fn.__name__, pad, tma)   # boxes through TMA
        assert "STACK:0 " in usage, (fn.__name__, pad, tma, packed, usage)    # no register spills


@needs_triton
def test_bench_bsa_smoke_runs_and_renders(monkeypatch):
    """`benchmarks/bench_bsa.py --smoke` (CPU, interpreter: the wiring the H200 call runs, on two small grids, one
    padded) writes the JSON that `benchmarks/tables.py` renders as issue 23's whole-path table."""
    root = Path(__file__).resolve().parents[1]
    out = BENCH_JSON
    r = BENCH_JOB.result()
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(out.read_text())
    accuracy, *grids = res["rows"]
    assert max(v for k, v in accuracy.items() if "_rel_" in k) < 2e-2, accuracy        # bf16 against fp32
    assert [g["grid"] for g in grids] == [[4, 8, 8], [4, 6, 6]] and all(g["triton_fwdbwd_ms"] > 0 for g in grids)
    assert all(g["triton1tma_kernel_fwdbwd_ms"] > 0 for g in grids)                    # the kernel alone, TMA boxes
    assert all(g["triton1packed_kernel_fwdbwd_ms"] > 0 for g in grids)                 # and from packed copies
    assert all(g["triton_split_ms"]["other"] > 0 and g["triton_tuned"] == g["triton_tuning_ms"] == {}
               for g in grids)                                                         # no tuning on a CPU
    sys.path.insert(0, str(root / "benchmarks"))
    import tables
    monkeypatch.setattr(tables, "RESULTS", out.parent)
    table = tables.bsa_whole_path()
    assert "| 256 (4×8×8) |" in table and "| 144 (4×6×6) |" in table and "triton out" in table, table
    assert "bsa_whole_path_cpu_2026-12-05.json" in table
    assert "fwd+bwd goes, ms a call (torch.profiler): cpu, 4×8×8: other" in table, table
