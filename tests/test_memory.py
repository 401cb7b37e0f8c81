"""Memory settings end to end: a LoRA trains on a quantised base through `train()` (CPU); `longcat-nb plan` prints a
plan that fits its budget and refuses one that cannot fit; on a GPU, block swap and activation offload give the same
losses and LoRA gradients as the resident model (bf16 and int8 bases); a quantised copy on disk (`quantised_base_dir`)
is written by the first run, read instead of the shards by the next (training and sampling), and never used half-written."""
import copy, json
from pathlib import Path

import pytest
import torch
from fastcore.test import test_close as close_
from safetensors.torch import load_file

from longcat_nb.cli import main as cli
from longcat_nb.config import load_config
from longcat_nb.lora import add_lora, lora_layers
from longcat_nb.offload import BlockRunner, PinnedBlocks, place_model
from longcat_nb.quantise import _plain, is_quantised, load_transformer
from longcat_nb.testing import random_lora_factors
from longcat_nb.model import LongCatVideoTransformer3DModel, compute_autocast
from longcat_nb.tiny import tiny_checkpoint
from longcat_nb.training import train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="block swap and activation offload need a CUDA GPU")


def test_train_on_int8_base(example, tmp_path):
    cfg = load_config(example)
    cfg.output_dir, cfg.validation_prompt, cfg.report_to = tmp_path / "out", None, "none"
    cfg.base_model_precision, cfg.max_train_steps, cfg.lora_export_formats = "int8-quanto", 3, ["peft"]
    result = train(cfg)
    assert len(result.losses) == 3 and all(map(torch.isfinite, torch.tensor(result.losses)))
    lora = load_file(result.lora_paths[0])
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())   # the LoRA moved


def test_plan_cli(example, capsys):
    assert cli(["plan", "--config", str(example), "--gpu-gib", "24", "--host-gib", "64", "--gpu-name", "NVIDIA L4"]) == 0
    out = capsys.readouterr().out
    keys = json.loads(out.split("config keys for the plan: ")[1])
    row = next(l for l in out.splitlines() if l.startswith("plan"))
    assert float(row.split()[-3]) <= 24 and set(keys) == {"base_model_precision", "musubi_blocks_to_swap", "activation_offload",
                                                          "ffn_chunks", "recomputed_block_inputs"}
    assert cli(["plan", "--config", str(example), "--gpu-gib", "0.05", "--host-gib", "64"]) == 1
    assert "cannot fit" in capsys.readouterr().err


def _step(model, device, dtype):
    "Loss and LoRA gradients of one forward/backward of `model` on fixed inputs (tiny shapes)."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 8, generator=g).to(device, dtype)
    y = torch.randn(1, 8, 32, generator=g).to(device, dtype)
    model.zero_grad(set_to_none=True)
    loss = model(x, torch.tensor([500.0], device=device), y, torch.ones(1, 8, dtype=torch.bool, device=device)).sample.square().mean()
    loss.backward()
    return loss.item(), {n: m.lora_A["default"].weight.grad.float().cpu() for n, m in lora_layers(model).items()}


def test_ffn_chunks_through_the_trainer_loader(example):
    "`ffn_chunks` reaches every block's FFN through the trainer's loader; the loss is the same and the LoRA gradients agree."
    from longcat_nb.training import load_trainable_transformer
    results = []
    for chunks in (1, 3):
        cfg = load_config(example)
        cfg.ffn_chunks = chunks
        model = load_trainable_transformer(cfg, tiny_checkpoint(), torch.float32).train()
        assert all(b.ffn.chunks == chunks for b in model.blocks)
        g = torch.Generator().manual_seed(0)
        for n, p in sorted(model.named_parameters()):
            if p.requires_grad: p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
        results.append(_step(model, "cpu", torch.float32))
    (loss1, grads1), (loss3, grads3) = results
    assert loss1 == loss3
    for n in grads1: close_(grads3[n], grads1[n], eps=1e-5 * grads1[n].abs().max().item())


def _lora_model(precision, dtype, swap=0, pinned=None):
    model = load_transformer(tiny_checkpoint(), dtype, precision, device="cuda", host_blocks=swap, progress=False,
                             on_host=pinned.add if pinned else None)
    torch.manual_seed(0)
    add_lora(model, 4)
    random_lora_factors(model, 0.1)     # one CPU generator: swapped blocks sit on the CPU here, resident ones on the GPU
    model.enable_gradient_checkpointing()
    return model


@cuda
@pytest.mark.parametrize("precision,dtype", [("bf16", torch.float32), ("int8-quanto", torch.bfloat16)])
def test_swap_and_offload_match_resident(precision, dtype):
    ref = _lora_model(precision, dtype)
    place_model(ref, "cuda")
    plain_loss, plain = _step(ref, "cuda", dtype)    # torch's checkpoint
    ref.enable_gradient_checkpointing(BlockRunner(ref, "cuda"))
    want_loss, want = _step(ref, "cuda", dtype)      # ours, resident: the same kernels as with swap / offload below
    tol = 1e-5 if dtype == torch.float32 else 5e-3   # H200, fp32: the same loss, LoRA grads within 4e-7 (relative)
    close_(want_loss, plain_loss, eps=tol)
    for k in want: close_(want[k], plain[k], eps=tol * max(1.0, plain[k].abs().max().item()))
    # pin: the swapped blocks pinned as they load (the trainer's way), else by BlockSwap after the load
    for swap, offload, pin in [(1, False, False), (2, False, True), (0, True, False), (2, True, False), (2, True, True)]:
        pinned = PinnedBlocks("cuda") if pin else None
        model = _lora_model(precision, dtype, swap, pinned)
        blocks = place_model(model, "cuda", swap, offload, pinned=pinned)
        assert isinstance(model._block_runner, BlockRunner)
        if swap:                             # every swapped weight page-locked, in one slab a block
            assert all(x.is_pinned() for i in blocks.host for _, _, h in blocks.host[i] for x in _plain(h))
            assert len(blocks.arena.sizes) == swap
        for _ in range(2):                   # the second step starts from the ring the first one left
            loss, grads = _step(model, "cuda", dtype)
            close_(loss, want_loss, eps=1e-6 if dtype == torch.float32 else 1e-3)
            for k in want: close_(grads[k], want[k], eps=1e-5 if dtype == torch.float32 else 1e-3)
        with torch.no_grad():                # sampling path: hooks only, no checkpointing
            g = torch.Generator().manual_seed(1)
            x = torch.randn(1, 16, 3, 8, 8, generator=g).to("cuda", dtype)
            y = torch.randn(1, 8, 32, generator=g).to("cuda", dtype)
            args = (x, torch.tensor([300.0], device="cuda"), y, torch.ones(1, 8, dtype=torch.bool, device="cuda"))
            close_(model(*args).sample, ref(*args).sample, eps=1e-5 if dtype == torch.float32 else 1e-2)


def _spy_shards(monkeypatch):
    "Count the tensors read from the checkpoint's fp32 shards (`quantise._read`)."
    import longcat_nb.quantise as quantise
    reads, real = [], quantise._read
    monkeypatch.setattr(quantise, "_read", lambda index, names, *a: reads.extend(names) or real(index, names, *a))
    return reads


def test_quantised_copy_written_then_read_by_training_and_sampling(example, tmp_path, monkeypatch):
    "The first run quantises the shards and writes the copy; the second reads only the copy and trains the same LoRA."
    from longcat_nb.sampling import LongCatVideoPipeline
    reads, copy_dir, loras = _spy_shards(monkeypatch), tmp_path / "drive" / "int8", []
    for run in ("first", "second"):
        cfg = load_config(example)
        cfg.output_dir, cfg.validation_prompt, cfg.report_to = tmp_path / run, None, "none"
        cfg.base_model_precision, cfg.max_train_steps, cfg.lora_export_formats = "int8-quanto", 2, ["peft"]
        cfg.quantised_base_dir = copy_dir
        n = len(reads)
        result = train(cfg)
        assert (copy_dir / "manifest.json").is_file()
        assert (len(reads) > n) == (run == "first"), (run, len(reads) - n)   # the second run never opens a shard
        loras.append(load_file(result.lora_paths[0]))
    assert loras[0].keys() == loras[1].keys() and all(torch.equal(loras[0][k], loras[1][k]) for k in loras[0])
    n = len(reads)
    dtype = json.loads((copy_dir / "manifest.json").read_text())["dtype"]
    pipe = LongCatVideoPipeline.from_pretrained(tiny_checkpoint(), torch_dtype=getattr(torch, dtype), device="cpu",
                                                with_text_encoder=False, precision="int8-quanto", quantised_dir=copy_dir)
    assert len(reads) == n and is_quantised(pipe.transformer.blocks[0].attn.qkv)
    config = tmp_path / "sample.json"       # `longcat-nb sample` with the config's quantised_base_dir
    config.write_text(json.dumps({"pretrained_model_name_or_path": str(tiny_checkpoint()), "base_model_precision": "int8-quanto",
                                  "quantised_base_dir": str(copy_dir)}))
    assert cli(["sample", "--config", str(config), "--prompt", "a red ball", "--size", "64x48", "--frames", "5", "--steps", "2",
                "--output", str(tmp_path / "s.mp4")]) == 0
    assert len(reads) == n and (tmp_path / "s.mp4").is_file()


def test_half_written_copy_is_never_used(tmp_path, monkeypatch):
    "A process killed while writing the copy leaves only a `.partial-*` folder; the next load quantises again and writes a whole copy."
    import subprocess, sys
    copy_dir = tmp_path / "q"
    script = ("import os, torch, longcat_nb.quantise as m\n"
              "from longcat_nb.tiny import tiny_checkpoint\n"
              "real, n = m.save_file, [0]\n"
              "def dying(*a, **k):\n"
              "    n[0] += 1\n"
              "    if n[0] == 3: os._exit(9)              # killed after rest + block 0, mid-copy\n"
              "    real(*a, **k)\n"
              "m.save_file = dying\n"
              f"m.load_transformer(tiny_checkpoint(), torch.bfloat16, 'int4-quanto', device='cpu', quantised_dir={str(copy_dir)!r})\n")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == 9
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".q.partial-")]
    assert not copy_dir.exists() and len(partial) == 1 and (partial[0] / "block_000.safetensors").is_file()
    reads = _spy_shards(monkeypatch)
    load_transformer(tiny_checkpoint(), torch.bfloat16, "int4-quanto", device="cpu", progress=False, quantised_dir=copy_dir)
    assert reads and (copy_dir / "manifest.json").is_file() and (copy_dir / "block_001.safetensors").is_file()
    reads.clear()
    load_transformer(tiny_checkpoint(), torch.bfloat16, "int4-quanto", device="cpu", progress=False, quantised_dir=copy_dir)
    assert not reads


def _wide_lora_model():
    "Hidden 1024, 8 blocks, bf16 base, rank-8 fp32 LoRA with random factors: big enough that block inputs are reused."
    torch.manual_seed(0)
    model = LongCatVideoTransformer3DModel(hidden_size=1024, depth=8, num_heads=8, caption_channels=64).to(torch.bfloat16)
    add_lora(model, 8)
    random_lora_factors(model, 0.05)
    model.enable_gradient_checkpointing()
    return model


def _delayed_step(model, sleep_cycles=20_000_000):
    """One bf16-autocast step over 16,384 tokens with the main stream held back before every block (forward and
    recompute), so the CPU runs blocks ahead of the GPU as at full size; LoRA gradients (fp32, on the CPU)."""
    hooks = [b.register_forward_pre_hook(lambda m, a: torch.cuda._sleep(sleep_cycles)) for b in model.blocks]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 16, 64, 64, generator=g).to("cuda", torch.bfloat16)
    y = torch.randn(1, 32, 64, generator=g).to("cuda", torch.bfloat16)
    model.zero_grad(set_to_none=True)
    with compute_autocast(torch.device("cuda")):
        out = model(x, torch.tensor([500.0], device="cuda"), y, torch.ones(1, 32, dtype=torch.bool, device="cuda"))
        loss = out.sample.float().square().mean()
    loss.backward()
    for h in hooks: h.remove()
    return {n: m.lora_A["default"].weight.grad.float().cpu() for n, m in lora_layers(model).items()}


@cuda
@pytest.mark.parametrize("recomputed", [0, 2, 6])
def test_offload_streams_keep_gradients_exact(recomputed):
    """Swap + activation offload (+ recomputed inputs) give the resident model's LoRA gradients while the main stream
    lags behind the CPU: an offloaded input copied back into memory that queued kernels still read would change them."""
    ref = _wide_lora_model()
    place_model(ref, "cuda")
    ref.enable_gradient_checkpointing(BlockRunner(ref, "cuda"))
    want = _delayed_step(ref)
    model = _wide_lora_model()
    place_model(model, "cuda", 3, True, max_tokens=16 * 32 * 32, recomputed_inputs=recomputed)
    for _ in range(3):
        got = _delayed_step(model)
        for k in want: close_(got[k], want[k], eps=1e-3 * max(1.0, want[k].abs().max().item()))


def test_grad_check_script_on_the_tiny_checkpoint():
    """benchmarks/grad_check_plans.py (the full-size check of the plans' gradients) runs; on the CPU recompute is exact,
    on a GPU swap + offload are within one bf16 rounding of the largest gradient (2⁻⁷: the H200 measured 1/142)."""
    import subprocess, sys
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "grad_check_plans.py"
    out = subprocess.run([sys.executable, str(script), "--tiny"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    tolerance = 2.0**-7 if torch.cuda.is_available() else 0.0
    assert res["plans"] and all(p["loss"] == res["resident_loss"] for p in res["plans"]), res
    assert all(p["max_rel_grad_diff"] <= tolerance for p in res["plans"]), res
