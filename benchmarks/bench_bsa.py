"""Block-sparse attention (longcat_nb.kernels) against dense cuDNN SDPA at LongCat-Video's shapes, on a GPU.

For each token grid (default 24×32×52 = 39,936 tokens, 832×512×93; and 24×44×80 = 84,480, 1280×704×93), with q, k, v
[1, 32, N, 128] bf16 and sparsity 0.9375, median of `--repeats` CUDA-event timings after warm-up (ms):
- dense: `longcat_nb.model.attention` (SDPA, cuDNN first), fwd and fwd+bwd;
- bsa whole path: `block_sparse_attention` (reorder, pooled scores, top-k, block mask, FlexAttention, reorder back);
- its parts: selection + block-mask build alone; the FlexAttention kernel alone on a prebuilt mask.
Then the output difference sparse vs dense on structured inputs (smooth fields through RMSNorm and the model's 3D
RoPE, as q/k are made in the model) and on plain random inputs, and optionally one full-size transformer block
(hidden 4096) fwd+bwd with each attention.

    python benchmarks/bench_bsa.py --json benchmarks/results/bench_bsa.json
"""
import argparse, json, math, statistics, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

from longcat_nb.kernels import (BlockSparse, FLEX_KERNEL_OPTIONS, block_scores, block_sparse_attention,
                                flex_block_attention, select_blocks, to_chunks)
from longcat_nb.model import LongCatBlock, apply_rope, attention, rope_3d

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import timed as attention_timed  # one CUDA-event timer for the attention benchmarks


def timed(fn, repeats):
    "Median milliseconds of `fn()` over `repeats` CUDA-event timings, after three warm-up calls (compiled kernels)."
    return attention_timed(fn, repeats, warmup=3)


def fwd_bwd(fn, xs, grad):
    "A closure running fn(*xs) and its backward with `grad`."
    def run():
        for x in xs: x.grad = None
        fn(*xs).backward(grad)
    return run


def structured_qkv(grid, heads=32, dim=128, seed=0):
    "q, k, v [1, heads, N, dim] bf16 from smooth random fields over the grid; q, k RMS-normalised and RoPE-rotated."
    g = torch.Generator(device="cuda").manual_seed(seed)
    T, H, W = grid
    out = []
    for i in range(3):
        coarse = torch.randn(1, heads * dim, max(T // 4, 1), max(H // 4, 1), max(W // 4, 1), device="cuda", generator=g)
        f = F.interpolate(coarse, size=grid, mode="trilinear", align_corners=False)
        f = f + 0.3 * torch.randn(f.shape, device="cuda", generator=g)                  # local detail
        x = f.reshape(heads, dim, -1).permute(0, 2, 1)[None]                               # [1, heads, N, dim]
        if i < 2: x = apply_rope(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), rope_3d(grid, dim, "cuda"))
        out.append(x.to(torch.bfloat16).contiguous())
    return out


def rel(a, b): return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bench_grid(grid, args, record):
    N, heads, dim = math.prod(grid), args.heads, args.dim
    q, k, v = (torch.randn(1, heads, N, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    bsa = lambda q, k, v: block_sparse_attention(q, k, v, grid, args.sparsity)
    dense = lambda q, k, v: attention(q, k, v, "sdpa")
    r = dict(grid=list(grid), tokens=N)
    t0 = time.time()
    with torch.no_grad(): bsa(q, k, v)
    fwd_bwd(bsa, (q, k, v), grad)()
    torch.cuda.synchronize(); r["first_call_s"] = round(time.time() - t0, 1)       # includes compiling the kernels
    with torch.no_grad():
        r["dense_fwd_ms"] = timed(lambda: dense(q, k, v), args.repeats)
        r["bsa_fwd_ms"] = timed(lambda: bsa(q, k, v), args.repeats)
        qc, kc, vc = (to_chunks(x, grid) for x in (q, k, v))
        r["select_ms"] = timed(lambda: select_blocks(block_scores(qc, kc), args.sparsity, None, dim), args.repeats)
        keep = select_blocks(block_scores(qc, kc), args.sparsity, None, dim)
        r["kept_fraction"] = keep.float().mean().item()
        r["kernel_fwd_ms"] = timed(lambda: flex_block_attention(qc, kc, vc, keep), args.repeats)
        r["reorder_qkv_ms"] = timed(lambda: [to_chunks(x, grid) for x in (q, k, v)], args.repeats)
    r["dense_fwdbwd_ms"] = timed(fwd_bwd(dense, (q, k, v), grad), args.repeats)
    r["bsa_fwdbwd_ms"] = timed(fwd_bwd(bsa, (q, k, v), grad), args.repeats)
    qc, kc, vc = (to_chunks(x, grid).detach().requires_grad_() for x in (q, k, v))
    r["kernel_fwdbwd_ms"] = timed(fwd_bwd(lambda a, b, c: flex_block_attention(a, b, c, keep), (qc, kc, vc), grad), args.repeats)
    r["speedup_fwd"] = r["dense_fwd_ms"] / r["bsa_fwd_ms"]
    r["speedup_fwdbwd"] = r["dense_fwdbwd_ms"] / r["bsa_fwdbwd_ms"]
    r["kernel_speedup_fwdbwd"] = r["dense_fwdbwd_ms"] / r["kernel_fwdbwd_ms"]
    with torch.no_grad():
        sq, sk, sv = structured_qkv(grid, heads, dim)
        r["diff_structured"] = rel(bsa(sq, sk, sv), dense(sq, sk, sv))
        r["diff_random"] = rel(bsa(q, k, v), dense(q, k, v))
    record(r)


def bench_block(grid, args, record):
    "One full-size block (hidden 4096, 32 heads), bf16, fwd+bwd w.r.t. its input, frozen weights."
    torch.manual_seed(0)
    block = LongCatBlock(4096, 32, 4, 512).to("cuda", torch.bfloat16).requires_grad_(False)
    for p in block.parameters(): p.data.normal_(0, 0.02)
    N, T = math.prod(grid), grid[0]
    x = torch.randn(1, N, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    t = torch.randn(1, T, 512, device="cuda")
    rope = rope_3d(grid, 128, "cuda")
    r = dict(what="full-size block fwd+bwd", grid=list(grid))
    for name, backend in [("sdpa", "sdpa"), ("bsa", BlockSparse(tuple(grid), args.sparsity))]:
        run = lambda: block(x, y, t, rope, None, 0, backend).float().sum().backward()
        r[f"{name}_ms"] = timed(run, max(args.repeats // 2, 3))
        torch.cuda.reset_peak_memory_stats(); run()
        r[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    record(r)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", default="24x32x52,24x44x80")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9375)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--block", action="store_true", help="also time one full-size transformer block")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, kernel_options=FLEX_KERNEL_OPTIONS,
                   heads=args.heads, dim=args.dim, sparsity=args.sparsity, repeats=args.repeats, rows=[])
    def record(r):
        results["rows"].append(r)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        if args.json:
            with open(args.json, "w") as f: json.dump(results, f, indent=1)
    grids = [tuple(int(n) for n in g.split("x")) for g in args.grids.split(",")]
    for grid in grids: bench_grid(grid, args, record)
    if args.block: bench_block(grids[0], args, record)


if __name__ == "__main__":
    main()
