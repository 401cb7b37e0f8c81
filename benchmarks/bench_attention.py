"""Which SDPA backend does the model's `attention()` land on, and what does each cost at LongCat-Video's shapes?

Times PyTorch SDPA forced to each backend (cuDNN, flash, memory-efficient) and the model's own
`longcat_nb.model.attention(..., backend="auto")`, forward and forward+backward, on q, k, v of
[1, 32, N, 128] bf16 — both contiguous and laid out as the model makes them (v a strided view of the qkv
projection). Median of `--repeats` CUDA-event timings after warm-up.

    python benchmarks/bench_attention.py --json bench_attention.json     # GPU
"""
import argparse, json, statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from longcat_nb.model import attention
from provenance import provenance   # benchmarks/provenance.py: date, commit, GPU, torch, command

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}


def timed(fn, repeats, warmup: int = 2):
    "Median milliseconds of `fn()` over `repeats` CUDA-event timings, after `warmup` warm-up calls."
    for _ in range(warmup): fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def qkv(tokens, heads, dim, layout):
    "q, k, v [1, heads, tokens, dim] bf16: `contiguous`, or `model` (views of one [1, N, 3, heads, dim] projection)."
    if layout == "contiguous":
        return [torch.randn(1, heads, tokens, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    base = torch.randn(1, tokens, 3, heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = base.permute(2, 0, 3, 1, 4)
    return q.contiguous(), k.contiguous(), v  # the model's q, k come out of RoPE contiguous; v stays a view


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=37440)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json")
    a = p.parse_args()
    flops = 4 * a.heads * a.tokens ** 2 * a.dim
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": a.tokens, "heads": a.heads, "dim": a.dim}
    for layout in ("contiguous", "model"):
        q, k, v = qkv(a.tokens, a.heads, a.dim, layout)
        g = torch.randn(1, a.heads, a.tokens, a.dim, device="cuda", dtype=torch.bfloat16)
        cases = {name: (lambda b=b: _with(b, q, k, v)) for name, b in BACKENDS.items()}
        cases["model_auto"] = lambda: attention(q, k, v, "auto")
        for name, fwd in cases.items():
            key = f"{layout}/{name}"
            try:
                with torch.no_grad(): ms = timed(fwd, a.repeats)
                ms_bwd = timed(lambda: torch.autograd.backward(fwd(), g), max(3, a.repeats // 2))
                res[key] = {"fwd_ms": round(ms, 2), "fwd_tflops": round(flops / ms / 1e9, 1), "fwd_bwd_ms": round(ms_bwd, 2)}
            except Exception as e:  # a backend that refuses these strides/shapes is a result too
                res[key] = {"error": f"{type(e).__name__}: {str(e)[:160]}"}
            print(key, res[key], flush=True)
    res = {**provenance(), **res}
    print(json.dumps(res))
    if a.json: open(a.json, "w").write(json.dumps(res, indent=2))


def _with(backend, q, k, v):
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v)


if __name__ == "__main__":
    main()
