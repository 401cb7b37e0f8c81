"""Would 128-query tiles pay for block-sparse attention? (issue 15, CPU analysis)

FlexAttention runs its forward about twice as fast with 128-row query tiles as with 64-row ones (SPEC §10), but the
release's chunks are 64 tokens (4×4×4), each with its own key selection. A 128-row tile covering two neighbouring query
chunks must visit the UNION of their selections. This script measures |union| / |own selection| for pairs of
neighbouring chunks (along W, H and T) on the same structured inputs as `bench_bsa.py` (smooth random fields,
RMS-normalised and RoPE-rotated) and on plain random inputs, top-k sparsity 0.9375, 8 heads (the statistic is per head).

    python benchmarks/bsa_tile_overlap.py [--heads 8]

A ratio near 1 would make 128-row tiles a 2× win; near 2 it cancels the faster tile.
"""
import argparse, math

import torch
import torch.nn.functional as F

from longcat_nb.kernels import block_scores, select_blocks, to_chunks
from longcat_nb.model import apply_rope, rope_3d


def structured_qk(grid, heads, dim=128, noise=0.3, seed=0):
    "q, k [1, heads, N, dim] fp32 from smooth random fields (as bench_bsa.structured_qkv, on the CPU)."
    g, (T, H, W), out = torch.Generator().manual_seed(seed), grid, []
    for _ in range(2):
        coarse = torch.randn(1, heads * dim, max(T // 4, 1), max(H // 4, 1), max(W // 4, 1), generator=g)
        f = F.interpolate(coarse, size=grid, mode="trilinear", align_corners=False)
        f = f + noise * torch.randn(f.shape, generator=g)
        x = f.reshape(heads, dim, -1).permute(0, 2, 1)[None]
        out.append(apply_rope(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), rope_3d(grid, dim)))
    return out


def union_ratio(keep, grid, axis: int) -> float:
    "Mean |union of two neighbouring query chunks' selections| / mean |one chunk's selection|, pairs along `axis` (1 T, 2 H, 3 W)."
    kg = keep.reshape(keep.shape[0], grid[0] // 4, grid[1] // 4, grid[2] // 4, -1).float()
    n = kg.shape[axis] // 2 * 2
    a = kg.narrow(axis, 0, n)
    shape = list(a.shape); shape[axis:axis + 1] = [n // 2, 2]
    return (a.reshape(shape).amax(axis + 1).sum(-1).mean() / kg.sum(-1).mean()).item()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=int, default=8)
    a = p.parse_args()
    print("| grid (T×H×W tokens) | inputs | key chunks kept per query chunk | union / kept, pairs along W | along H | along T |")
    print("|---|---|---|---|---|---|")
    for grid in [(24, 32, 52), (24, 44, 80)]:
        for kind in ("structured", "random"):
            q, k = structured_qk(grid, a.heads) if kind == "structured" else (torch.randn(1, a.heads, math.prod(grid), 128) for _ in range(2))
            scores = block_scores(to_chunks(q, grid), to_chunks(k, grid))
            keep = select_blocks(scores, 0.9375).mask(scores.shape[-1])[0]
            r = [union_ratio(keep, grid, ax) for ax in (3, 2, 1)]
            print(f"| {'×'.join(map(str, grid))} | {kind} | {keep.sum(-1).float().mean():.0f} | " + " | ".join(f"{x:.2f}" for x in r) + " |")
