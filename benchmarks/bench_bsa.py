"""Block-sparse attention (longcat_nb.kernels) against dense cuDNN SDPA at LongCat-Video's shapes, on a GPU, for each
sparse kernel: FlexAttention (`flex`, the `auto` choice on CUDA) and ours (`triton`, `triton_block_attention`: kept key
chunks taken `chunks_per_step` at a time; config `bsa_kernel: "triton"`).

For each token grid (default 24×32×52 = 39,936 tokens, 832×512×93; and 24×44×80 = 84,480, 1280×704×93), with q, k, v
[1, 32, N, 128] bf16 and sparsity 0.9375, median of `--repeats` CUDA-event timings after warm-up (ms):
- dense: `longcat_nb.model.attention` (SDPA, cuDNN first), fwd and fwd+bwd;
- per kernel, the whole path: `block_sparse_attention(..., kernel=k)` — flex: reorder (padding a grid that does not
  divide by the 4×4×4 chunk), pooled scores, top-k index lists, sparse kernel, reorder back; triton: chunk means and
  the sparse step read q, k, v in raster order, no reorder — fwd and fwd+bwd;
- its parts: selection alone; each sparse kernel alone on a prebuilt selection, fwd and fwd+bwd (flex on chunk-major
  inputs, ours on raster-order ones, also at each of `--triton-steps` key chunks per iteration in its forward and dq:
  1 is the FlexAttention-like 64×64 tile, 2 the 128-wide key tile, 1tma one chunk a step read as a box through TMA
  (`tma: 1`), 1packed one chunk a step read from chunk-major copies of the other side (`packed: 1`: the copies are
  timed with it); its dk/dv kernel keeps its own settings), and how
  unevenly the key chunks are kept (max / mean, structured inputs: the dk/dv kernel's longest program); and the
  launch settings the tuner chose for the whole path (`triton_tuned`, and every candidate's fwd+bwd ms where this run
  tuned: `triton_tuning_ms`) and where its fwd+bwd goes, kernel by kernel (`triton_split_ms`, torch.profiler).
Then per kernel, accuracy against the fp32 dense-under-mask reference at 4,096 tokens (8×16×32; output, dq, dk, dv
relative errors), the output difference sparse vs dense on structured inputs (smooth fields through RMSNorm and the
model's 3D RoPE, as q/k are made in the model) and on plain random inputs, and optionally one full-size transformer
block (hidden 4096) fwd+bwd with each attention (the `auto` kernel, or LONGCAT_BSA_KERNEL).

    python benchmarks/bench_bsa.py --json benchmarks/results/bench_bsa.json                      # both kernels
    python benchmarks/bench_bsa.py --kernel triton --json benchmarks/results/bench_bsa_triton.json
    python benchmarks/bench_bsa.py --grids 24x30x52 --json /tmp/bsa_832x480.json    # 832×480×93: padded to 24×32×52

Measured on an H200 (issue 23): whole path 6.85× (Triton) / 5.65× (Flex) over dense fwd+bwd at 39,936 tokens; the
Triton kernel alone 9.84× at 1 key chunk per step against 8.72× at 2, hence 1 by default. Expect a first compile per
configuration (`first_call_s`). Its accuracy test at the issue's shape:
`python -m pytest -q -s tests/test_kernels.py -k cuda`.
"""
import argparse, json, math, re, statistics, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from longcat_nb.kernels import (BlockSparse, block_scores, block_sparse_attention, flex_block_attention,
                                kernel_settings, real_tokens, select_blocks, to_chunks, triton_block_attention,
                                tuning_file, TUNING_TIMES)
from longcat_nb.model import LongCatBlock, apply_rope, attention, rope_3d
from longcat_nb.testing import block_sparse_reference, output_and_grads

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import timed as attention_timed  # one CUDA-event timer for the attention benchmarks
from provenance import provenance   # benchmarks/provenance.py: date, commit, GPU, torch, command


DEV = "cuda"   # `--smoke`: "cpu" (Triton's interpreter)


def timed(fn, repeats):
    """Median milliseconds of `fn()` over `repeats` CUDA-event timings, after three warm-up calls (compiled kernels);
    on the CPU (`--smoke`, a wiring check) one call's wall time."""
    if DEV == "cuda": return attention_timed(fn, repeats, warmup=3)
    t0 = time.perf_counter(); fn()
    return (time.perf_counter() - t0) * 1e3


def sync():
    if DEV == "cuda": torch.cuda.synchronize()


def kernel_split(fn, repeats=5) -> dict:
    """Milliseconds a call of `fn()` spends in each of our sparse kernels (`_bsa_*`, by name) and in everything else
    (`other`: selection, index lists, copies), from torch.profiler's device times — on the CPU (`--smoke`) its op
    times, where the interpreted kernels are not ops and all of it is `other`."""
    fn(); sync()
    cuda = DEV == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(repeats): fn()
        sync()
    split = {}
    for e in prof.key_averages():
        name = e.key if e.key.startswith("_bsa_") else "other"
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        split[name] = split.get(name, 0.0) + us / 1e3 / repeats
    return {k: round(v, 3) for k, v in sorted(split.items())}


def fwd_bwd(fn, xs, grad):
    "A closure running fn(*xs) and its backward with `grad`."
    def run():
        for x in xs: x.grad = None
        fn(*xs).backward(grad)
    return run


def structured_qkv(grid, heads=32, dim=128, seed=0):
    "q, k, v [1, heads, N, dim] bf16 from smooth random fields over the grid; q, k RMS-normalised and RoPE-rotated."
    g = torch.Generator(device=DEV).manual_seed(seed)
    T, H, W = grid
    out = []
    for i in range(3):
        coarse = torch.randn(1, heads * dim, max(T // 4, 1), max(H // 4, 1), max(W // 4, 1), device=DEV, generator=g)
        f = F.interpolate(coarse, size=grid, mode="trilinear", align_corners=False)
        f = f + 0.3 * torch.randn(f.shape, device=DEV, generator=g)                  # local detail
        x = f.reshape(heads, dim, -1).permute(0, 2, 1)[None]                               # [1, heads, N, dim]
        if i < 2: x = apply_rope(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), rope_3d(grid, dim, DEV))
        out.append(x.to(torch.bfloat16).contiguous())
    return out


def tuned() -> dict:
    "The tuning file's entries for this device (key → launch settings); none before the first tuning."
    path, device = tuning_file(), torch.cuda.get_device_name() if DEV == "cuda" else DEV
    entries = json.loads(path.read_text()) if path.exists() else {}
    return {key: v for key, v in entries.items() if key.startswith(f"{device}|")}


def rel(a, b): return ((a.float() - b.float()).norm() / b.float().norm()).item()


STEPS = re.compile(r"(\d+)(tma|packed)?")          # --triton-steps entries: 1, 2, 1tma, 1packed


def step_options(steps) -> dict:
    "Our kernel's options for a `--triton-steps` entry: key chunks a step, and how they are read (rows, tma, packed)."
    n, read = STEPS.fullmatch(steps).groups()
    return dict(chunks_per_step=int(n), tma=int(read == "tma"), packed=int(read == "packed"))


def sparse_kernel(name, grid, steps=None):
    """The sparse step alone on prebuilt index lists: FlexAttention (chunk-major inputs), or ours (raster-order inputs,
    read in place) with `step_options(steps)`."""
    if name == "flex": return flex_block_attention
    opts = None if steps is None else step_options(steps)
    return lambda q, k, v, kept, real: triton_block_attention(q, k, v, kept, grid, kernel_options=opts)


def dkdv_balance(q, k, grid, sparsity):
    "max / mean of how many query chunks keep each key chunk (the dk/dv kernel's work per program), over heads."
    real = real_tokens(grid, device=q.device)
    kept = select_blocks(block_scores(to_chunks(q, grid), to_chunks(k, grid), 64, real), sparsity, None, q.shape[-1])
    per_key = kept.mask(kept.counts.shape[-1]).sum(-2).float()
    return (per_key.amax() / per_key.mean()).item()


def bench_grid(grid, args, record):
    N, heads, dim = math.prod(grid), args.heads, args.dim
    q, k, v = (torch.randn(1, heads, N, dim, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    dense = lambda q, k, v: attention(q, k, v, "sdpa")
    r = dict(grid=list(grid), tokens=N)
    real = real_tokens(grid, device=DEV)                     # None unless the grid is padded to whole chunks
    with torch.no_grad():
        r["dense_fwd_ms"] = timed(lambda: dense(q, k, v), args.repeats)
        qc, kc, vc = (to_chunks(x, grid) for x in (q, k, v))
        scores = lambda: block_scores(qc, kc, 64, real)
        r["select_ms"] = timed(lambda: select_blocks(scores(), args.sparsity, None, dim), args.repeats)
        kept = select_blocks(scores(), args.sparsity, None, dim)
        r["kept_fraction"] = kept.counts.float().mean().item() / (qc.shape[2] // 64)
        r["reorder_qkv_ms"] = timed(lambda: [to_chunks(x, grid) for x in (q, k, v)], args.repeats)
    r["dense_fwdbwd_ms"] = timed(fwd_bwd(dense, (q, k, v), grad), args.repeats)
    cq, ck, cv = (to_chunks(x, grid).detach().requires_grad_() for x in (q, k, v))
    cgrad = to_chunks(grad, grid)
    for name in args.kernel:
        bsa = lambda q, k, v: block_sparse_attention(q, k, v, grid, args.sparsity, kernel=name)
        t0 = time.time()
        with torch.no_grad(): bsa(q, k, v)
        fwd_bwd(bsa, (q, k, v), grad)()
        sync(); r[f"{name}_first_call_s"] = round(time.time() - t0, 1)   # includes compiling
        with torch.no_grad(): r[f"{name}_fwd_ms"] = timed(lambda: bsa(q, k, v), args.repeats)
        r[f"{name}_fwdbwd_ms"] = timed(fwd_bwd(bsa, (q, k, v), grad), args.repeats)
        r[f"{name}_speedup_fwd"] = r["dense_fwd_ms"] / r[f"{name}_fwd_ms"]
        r[f"{name}_speedup_fwdbwd"] = r["dense_fwdbwd_ms"] / r[f"{name}_fwdbwd_ms"]
        if name == "triton":      # where its fwd+bwd goes, kernel by kernel; what the tuner chose (CUDA only)
            r["triton_split_ms"] = kernel_split(fwd_bwd(bsa, (q, k, v), grad))
            mine = lambda key: f"|{'x'.join(map(str, grid))}x4x4x4|" in key
            r["triton_tuned"] = {key: dict(zip(kernel_settings("triton"), v)) for key, v in tuned().items() if mine(key)}
            r["triton_tuning_ms"] = {key: {",".join(map(str, c)): round(ms, 3) for c, ms in times.items()}
                                     for key, times in TUNING_TIMES.items() if mine(key)}   # every candidate's time
        for steps in ([None] if name == "flex" else args.triton_steps):
            tag = name if steps is None else f"{name}{steps}"
            fn = sparse_kernel(name, grid, steps)
            ins, leaves, g_out = ((qc, kc, vc), (cq, ck, cv), cgrad) if name == "flex" else ((q, k, v), (q, k, v), grad)
            with torch.no_grad(): r[f"{tag}_kernel_fwd_ms"] = timed(lambda: fn(*ins, kept, real), args.repeats)
            step = lambda a, b, c: fn(a, b, c, kept, real)
            r[f"{tag}_kernel_fwdbwd_ms"] = timed(fwd_bwd(step, leaves, g_out), args.repeats)
            r[f"{tag}_kernel_speedup_fwdbwd"] = r["dense_fwdbwd_ms"] / r[f"{tag}_kernel_fwdbwd_ms"]
        with torch.no_grad():
            sq, sk, sv = structured_qkv(grid, heads, dim)
            r[f"{name}_diff_structured"] = rel(bsa(sq, sk, sv), dense(sq, sk, sv))
            r[f"{name}_diff_random"] = rel(bsa(q, k, v), dense(q, k, v))
            r["dkdv_max_over_mean_structured"] = dkdv_balance(sq, sk, grid, args.sparsity)
    record(r)


def accuracy(args, record, grid):
    "Each kernel's whole path (bf16) against the fp32 dense-under-mask reference on `grid`: output, dq, dk, dv."
    g = torch.Generator(device=DEV).manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, math.prod(grid), args.dim, device=DEV, generator=g, dtype=torch.bfloat16)
               for _ in range(3))
    ref = output_and_grads(lambda q, k, v: block_sparse_reference(q, k, v, grid, args.sparsity), q.float(), k.float(),
                           v.float())
    r = dict(what="accuracy vs fp32 reference", grid=list(grid), tokens=math.prod(grid))
    for name in args.kernel:
        got = output_and_grads(lambda q, k, v: block_sparse_attention(q, k, v, grid, args.sparsity, kernel=name), q, k, v)
        for what, a, b in zip(("out", "dq", "dk", "dv"), got, ref): r[f"{name}_rel_{what}"] = rel(a, b)
    record(r)


def bench_block(grid, args, record):
    "One full-size block (hidden 4096, 32 heads), bf16, fwd+bwd w.r.t. its input, frozen weights."
    torch.manual_seed(0)
    block = LongCatBlock(4096, 32, 4, 512).to(DEV, torch.bfloat16).requires_grad_(False)
    for p in block.parameters(): p.data.normal_(0, 0.02)
    N, T = math.prod(grid), grid[0]
    x = torch.randn(1, N, 4096, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(1, 512, 4096, device=DEV, dtype=torch.bfloat16)
    t = torch.randn(1, T, 512, device=DEV)
    rope = rope_3d(grid, 128, DEV)
    r = dict(what="full-size block fwd+bwd", grid=list(grid))
    for name, backend in [("sdpa", "sdpa"), ("bsa", BlockSparse(tuple(grid), args.sparsity))]:
        run = lambda: block(x, y, t, rope, None, 0, backend).float().sum().backward()
        r[f"{name}_ms"] = timed(run, max(args.repeats // 2, 3))
        torch.cuda.reset_peak_memory_stats(); run()
        r[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    record(r)


def main(argv=None) -> dict:
    global DEV
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", default="24x32x52,24x44x80")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9375)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--kernel", default="flex,triton", help="sparse kernels to time, comma-separated: flex, triton")
    ap.add_argument("--triton-steps", default="1,2,1tma,1packed",
                    help="key chunks per iteration to time our kernel alone at (1tma: one, as a box through TMA; "
                         "1packed: one, from chunk-major copies)")
    ap.add_argument("--block", action="store_true", help="also time one full-size transformer block")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="a wiring check on the CPU under TRITON_INTERPRET=1: triton only, 2 heads × 64, grids 4x8x8 and "
                         "4x6x6 (padded), 1 repeat (its times mean nothing)")
    args = ap.parse_args(argv)
    if args.smoke:
        DEV, args.heads, args.dim, args.repeats, args.kernel, args.grids = "cpu", 2, 64, 1, "triton", "4x8x8,4x6x6"
        if args.block: ap.error("--block needs a GPU (a full-size block)")
    args.kernel = args.kernel.split(",")
    args.triton_steps = args.triton_steps.split(",")
    if not all(STEPS.fullmatch(n) for n in args.triton_steps):
        ap.error(f"--triton-steps {args.triton_steps}: expected chunk counts, 1tma for one chunk through TMA, "
                 "1packed for one from chunk-major copies")
    if not set(args.kernel) <= {"flex", "triton"}: ap.error(f"--kernel {args.kernel}: expected flex and/or triton")
    device = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (Triton interpreter)"
    results = dict(**provenance(), device=device, kernel_options=kernel_settings("flex"),
                   triton_kernel_options=kernel_settings("triton"),
                   heads=args.heads, dim=args.dim, sparsity=args.sparsity, repeats=args.repeats, rows=[])
    def record(r):
        results["rows"].append(r)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        if args.json:
            with open(args.json, "w") as f: json.dump(results, f, indent=1)
    grids = [tuple(int(n) for n in g.split("x")) for g in args.grids.split(",")]
    accuracy(args, record, (4, 8, 8) if args.smoke else (8, 16, 32))
    for grid in grids: bench_grid(grid, args, record)
    if args.block: bench_block(grids[0], args, record)
    return results


if __name__ == "__main__":
    main()
