"""One transformer block's training step, eager against fused elementwise work (`set_fused_elementwise`).

The block is the released width (hidden 4096, 32 heads, LoRA rank 16 on the trainer's targets, random bf16 weights,
`calibrate_memory.one_block_model`) at 832×480×93's 37,440 tokens (latent grid 24×30×52) with 512 text tokens, run as the
trainer runs each block: under the bf16 autocast (`compute_autocast`), checkpointed (`enable_gradient_checkpointing`),
forward then backward of a loss on its output. Each variant: the first step (fused: compiles its functions), then
the median of `--steps` steps, peak GPU memory, the output's and the LoRA gradients' difference from eager. Prints one
JSON object, with `benchmarks/provenance.py`'s fields.

    python benchmarks/bench_elementwise.py                      # on a CUDA GPU
    python benchmarks/bench_elementwise.py --tiny               # hidden 256, 2 heads, 560 tokens, on the CPU (a check)
    python benchmarks/bench_elementwise.py --json out.json
"""
import argparse, statistics, time

import torch

from provenance import emit, provenance   # benchmarks/provenance.py: date, commit, GPU, torch, command; the JSON line


def build(hidden: int, heads: int, rank: int, device):
    "The one-block LoRA model of the memory chapter, checkpointed as the trainer does, on `device`."
    from calibrate_memory import one_block_model
    model = one_block_model(hidden, heads, rank).to(device)
    model.enable_gradient_checkpointing()
    return model.train()


def inputs(model, grid, text_tokens: int, device, seed: int = 0):
    "Block inputs for a (T, H, W) token grid: x (needs a gradient, as a block input does in training), text, t, rope."
    from longcat_nb.model import rope_3d
    C, g = model.config.hidden_size, torch.Generator().manual_seed(seed)
    N = grid[0] * grid[1] * grid[2]
    x = torch.randn(1, N, C, generator=g).to(device, torch.bfloat16).requires_grad_()
    y = torch.randn(1, text_tokens, C, generator=g).to(device, torch.bfloat16)
    t = torch.randn(1, grid[0], model.config.adaln_tembed_dim, generator=g).to(device)
    return x, y, t, rope_3d(grid, C // model.config.num_heads, device)


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def autocast(device):
    "The trainer's autocast on CUDA; bf16 autocast on the CPU."
    from longcat_nb.model import compute_autocast
    return compute_autocast(device) if device.type == "cuda" else torch.autocast("cpu", torch.bfloat16)


def step(model, x, y, t, rope, device, num_cond: int = 0):
    "One checkpointed forward and backward of block 0 under the trainer's autocast → (output, LoRA gradients)."
    with autocast(device):
        out = model._gradient_checkpointing_func(model.blocks[0], x, y, t, rope, None, num_cond, "sdpa", None)
    out.float().square().mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    x.grad = None
    return out.detach(), grads


def timed(fn, device, steps: int) -> tuple[dict, object]:
    "First call and median of `steps` more (seconds), peak memory; the last call's result."
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
    times, result = [], None
    for _ in range(steps + 1):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    stats = dict(first_s=round(times[0], 4), median_s=round(statistics.median(times[1:]), 5))
    if device.type == "cuda": stats["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return stats, result


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="hidden 256, 2 heads, rank 4, 4×10×14 tokens, 24 text, CPU")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    p.add_argument("--backend", default="inductor", help="torch.compile backend of the fused functions")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    if a.tiny: shape = dict(hidden=256, heads=2, rank=4, grid=(4, 10, 14), text=24)
    else: shape = dict(hidden=4096, heads=32, rank=16, grid=(24, 30, 52), text=512)
    device = torch.device("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    model = build(shape["hidden"], shape["heads"], shape["rank"], device)
    args = inputs(model, shape["grid"], shape["text"], device)
    eager, (out_e, grads_e) = timed(lambda: step(model, *args, device), device, a.steps)
    model.set_fused_elementwise(a.backend)
    fused, (out_f, grads_f) = timed(lambda: step(model, *args, device), device, a.steps)
    result = dict(**provenance(), backend=a.backend, tokens=args[0].shape[1], **shape, steps=a.steps,
                  eager=eager, fused=fused, speedup=round(eager["median_s"] / fused["median_s"], 3),
                  output_rel_diff=rel(out_f, out_e),
                  max_grad_rel_diff=max(rel(grads_f[n], g) for n, g in grads_e.items()))
    result["grid"] = list(shape["grid"])
    return emit(result, a.json)


if __name__ == "__main__":
    main()
