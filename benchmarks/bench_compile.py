"""Where does a transformer forward spend its time, and does regional `torch.compile` of the blocks pay?

Full 13.6B config, random bf16 weights on the GPU (as `bench_model.py`), 832×480×93 latents. Measures:
1. eager forward (median of `--repeats`) and a profiler table of one eager forward, grouped by kernel kind;
2. the same forward with every `LongCatBlock` compiled (`block.compile()`, one graph reused by all 48 blocks):
   first-call time (compilation) and median;
3. the LoRA training step of `bench_model.py` (rank 128, checkpointing, AdamW) with compiled blocks, next to the
   eager step measured by `bench_model.py`;
4. the largest absolute difference between eager and compiled outputs (same weights and inputs).

    python benchmarks/bench_compile.py --json bench_compile.json
"""
import argparse, json, time
from collections import defaultdict
from types import SimpleNamespace

import torch

from bench_model import build_model, lora_part, make_inputs, sync, timed
from provenance import provenance   # benchmarks/provenance.py: date, commit, GPU, torch, command


def kernel_kind(name: str) -> str:
    "Coarse class of a CUDA kernel name."
    n = name.lower()
    if "_bsa_" in n: return "attention (block-sparse)"                 # longcat_nb.kernels' Triton kernels
    if any(k in n for k in ("cudnn", "flash", "fmha", "attention", "sdpa")): return "attention"
    if any(k in n for k in ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul")): return "matmul"
    if "triton" in n: return "triton (fused)"
    if any(k in n for k in ("norm", "reduce")): return "norm/reduce"
    return "elementwise/copy"


def profile_forward(model, inputs):
    "CUDA time of one forward per kernel kind (ms)."
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(**inputs)
        sync(torch.device("cuda"))
    kinds = defaultdict(float)
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if e.device_type.name == "CUDA" or t: kinds[kernel_kind(e.key)] += t / 1e3
    return {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args()
    device = torch.device("cuda")
    args = SimpleNamespace(frames=93, width=832, height=480, text_tokens=512, valid_tokens=120, lora_rank=128,
                           train_steps=a.train_steps)
    model = build_model({}, device, torch.bfloat16)
    inputs = make_inputs(args, dict(model.config), device)
    res = {**provenance(), "device": torch.cuda.get_device_name()}

    def fwd():
        with torch.no_grad(): return model(**inputs).sample
    res["eager_forward"] = timed(fwd, a.repeats, device)
    res["eager_profile_ms"] = profile_forward(model, inputs)
    ref = fwd().float()
    print(json.dumps(res), flush=True)

    for block in model.blocks: block.compile()
    t0 = time.perf_counter(); out = fwd(); sync(device)
    res["compiled_forward_first_call_s"] = round(time.perf_counter() - t0, 1)
    res["compiled_forward"] = timed(fwd, a.repeats, device)
    res["compiled_vs_eager_max_abs_diff"] = float((out.float() - ref).abs().max())
    res["ref_abs_max"] = float(ref.abs().max())
    res["compiled_profile_ms"] = profile_forward(model, inputs)
    print(json.dumps(res), flush=True)
    del out, ref
    torch.cuda.empty_cache()

    t0 = time.perf_counter()
    try:
        res["compiled_lora_step"] = lora_part(model, inputs, args, device)
    except Exception as e:
        res["compiled_lora_step"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    res["compiled_lora_total_s"] = round(time.perf_counter() - t0, 1)
    line = json.dumps(res)
    print(line)
    if a.json: open(a.json, "w").write(line + "\n")


if __name__ == "__main__":
    main()
