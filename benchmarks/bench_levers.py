"""Issue 22's CPU-built levers, each on and off, on one transformer block at full width: LoRA in the GEMM epilogue
(`lora.LoraEpilogueLinear`) and the fused q/k RMSNorm + RoPE Triton kernel (`kernels.qk_norm_rope_triton`), alone
and together, eager and in a compiled block, beside the existing fused-elementwise lever (`set_fused_elementwise`).

The block is the released width (hidden 4096, 32 heads, LoRA rank 16 on the trainer's targets, random bf16 weights,
`calibrate_memory.one_block_model`) at 832×480×93's 37,440 tokens (latent grid 24×30×52, one conditioning frame: the
image-to-video step) with 512 text tokens, run as the trainer runs each block: under the bf16 autocast
(`compute_autocast`), checkpointed keeping self-attention's output, as the trainer does on CUDA (eager:
`checkpoint_keeping_attention`; compiled: `training.compiled_checkpointing`, checkpoint and block in one graph; the
`compiled_recompute` variant recomputes attention, as compiled blocks did before) — forward, then backward of a loss on
its output. Each variant: the first step (compiles, if it does), the median of `--steps` steps, peak GPU memory, and its
output's and LoRA gradients' distance from the `plain` variant's (no lever: PEFT's LoRA layers, eager elementwise
work; the trainer's eager blocks carry the LoRA epilogue, and on sm_80+ GPUs the q/k kernel: `both`). Then each lever alone, fwd and fwd+bwd: the q/k norm + RoPE over the packed qkv [1, 37440, 12288]
(eager torch ops, inductor-compiled, Triton kernel; their distance from the fp32 computation) and one LoRA linear per
shape (qkv 4096→12288, w1 4096→11008, w2 11008→4096) with PEFT's sum and with the epilogue. Prints one JSON
object, with `benchmarks/provenance.py`'s fields.

    python benchmarks/bench_levers.py --json benchmarks/results/levers_h200.json      # on a CUDA GPU (~5 min)
    python benchmarks/bench_levers.py --variants plain lora_epilogue qk_triton        # a subset
    TRITON_INTERPRET=1 python benchmarks/bench_levers.py --tiny                       # hidden 256, CPU: a wiring check
"""
import argparse, json

import torch

from bench_elementwise import autocast, inputs, rel, step, timed   # one block as the trainer runs it, timed
from provenance import emit, provenance   # benchmarks/provenance.py: date, commit, GPU, torch, command; the JSON line

# variant: (LoRA in the epilogue, what self-attention's q/k work runs on, the rest's elementwise backend, compiled
# — "keep": keeping attention's output, "recompute": recomputing it)
VARIANTS = {
    "plain": (False, None, None, False),
    "lora_epilogue": (True, None, None, False),
    "qk_triton": (False, "triton", None, False),
    "both": (True, "triton", None, False),
    "fused_inductor": (False, "inductor", "inductor", False),
    "fused_inductor_both": (True, "triton", "inductor", False),
    "compiled_recompute": (True, None, None, "recompute"),
    "compiled": (False, None, None, "keep"),
    "compiled_lora_epilogue": (True, None, None, "keep"),
    "compiled_both": (True, "triton", None, "keep"),
}


def build(hidden: int, heads: int, rank: int, device):
    "The one-block LoRA model of the memory chapter (`add_lora`: epilogue layers), on `device`, in training mode."
    from calibrate_memory import one_block_model
    return one_block_model(hidden, heads, rank).to(device).train()


def configure(model, variant: str, backend: str):
    "Put `model` in `variant`'s state (`VARIANTS`), undoing the previous variant's."
    from longcat_nb.lora import set_lora_epilogue
    from longcat_nb.model import SelfAttention, checkpoint_keeping_attention
    from longcat_nb.training import compiled_checkpointing
    epilogue, qk, rest, compiled = VARIANTS[variant]
    set_lora_epilogue(model, epilogue)
    model.set_fused_elementwise(backend if rest else None)
    for m in model.modules():
        if isinstance(m, SelfAttention):
            m.fused_elementwise = "triton" if qk == "triton" else backend if qk else None
    torch._dynamo.reset()
    if compiled:
        model.enable_gradient_checkpointing(compiled_checkpointing(compiled == "keep", backend))
    else:
        model.enable_gradient_checkpointing(checkpoint_keeping_attention)


def block_variants(model, args, names, device, steps, backend, num_cond) -> dict:
    "Every variant of `names` on the block: timings and distance from `plain` (measured first)."
    results, ref = {}, None
    for name in ["plain"] + [n for n in names if n != "plain"]:
        configure(model, name, backend)
        stats, (out, grads) = timed(lambda: step(model, *args, device, num_cond), device, steps)
        if ref is None:
            ref = out, grads
        else:
            stats |= dict(output_rel_diff=rel(out, ref[0]),
                          max_grad_rel_diff=max(rel(grads[n], g) for n, g in ref[1].items()),
                          speedup=round(results["plain"]["median_s"] / stats["median_s"], 3))
        results[name] = stats
        print(name, json.dumps(stats), flush=True)
    configure(model, "plain", backend)
    return results


def qk_alone(model, N: int, grid, device, steps: int, backend: str) -> dict:
    "q/k norm + RoPE over the packed qkv [1, N, 3C]: eager, compiled, Triton; fwd and fwd+bwd; distance from fp32."
    from longcat_nb.kernels import qk_norm_rope_triton
    from longcat_nb.model import fused, qk_norm_rope, rope_3d
    attn, C = model.blocks[0].attn, model.config.hidden_size
    heads, qw, kw, eps = attn.num_heads, attn.q_norm.weight, attn.k_norm.weight, attn.q_norm.eps
    rope = rope_3d(grid, C // heads, device)
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(1, N, 3 * C, generator=g).to(device, torch.bfloat16).requires_grad_()
    grads = [torch.randn(1, heads, N, C // heads, generator=g).to(device, torch.bfloat16) for _ in range(3)]
    exact = qk_norm_rope(qkv.detach().float(), heads, qw, kw, eps, *rope)
    res = {}
    fns = dict(eager=qk_norm_rope, inductor=fused(qk_norm_rope, backend), triton=qk_norm_rope_triton)
    for name, fn in fns.items():
        fwd, outs = timed(lambda: fn(qkv.detach(), heads, qw, kw, eps, *rope), device, steps)
        both, _ = timed(lambda: torch.autograd.backward(fn(qkv, heads, qw, kw, eps, *rope), grads), device, steps)
        qkv.grad = None
        res[name] = dict(fwd_ms=round(fwd["median_s"] * 1e3, 3), fwd_bwd_ms=round(both["median_s"] * 1e3, 3),
                         q_rel_vs_fp32=rel(outs[0], exact[0]), k_rel_vs_fp32=rel(outs[1], exact[1]))
        print("qk", name, json.dumps(res[name]), flush=True)
    return res


def lora_alone(N: int, hidden: int, rank: int, device, steps: int) -> dict:
    "One LoRA linear per shape under the trainer's autocast, PEFT's sum against the epilogue; fwd and fwd+bwd."
    from peft import LoraConfig, inject_adapter_in_model
    from longcat_nb.lora import set_lora_epilogue, set_lora_input_cast
    from longcat_nb.model import ffn_hidden_size
    ffn, res = ffn_hidden_size(hidden, 4), {}
    for name, (d_in, d_out) in dict(qkv=(hidden, 3 * hidden), w1=(hidden, ffn), w2=(ffn, hidden)).items():
        net = torch.nn.Sequential(torch.nn.Linear(d_in, d_out, bias=name == "qkv")).to(device, torch.bfloat16)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=["0"]), net)
        net.requires_grad_(False)
        for lin in (net[0].lora_A["default"], net[0].lora_B["default"]):
            lin.float().weight.requires_grad_(True)
            torch.nn.init.normal_(lin.weight, std=0.02)
        set_lora_input_cast(net, False)
        x = torch.randn(1, N, d_in, device=device, dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn(1, N, d_out, device=device, dtype=torch.bfloat16)
        for on in (False, True):
            set_lora_epilogue(net, on)
            def fwd():
                with autocast(device): return net(x)
            f, out = timed(fwd, device, steps)
            fb, _ = timed(lambda: fwd().backward(g), device, steps)
            key = f"{name}_{'epilogue' if on else 'peft'}"
            res[key] = dict(fwd_ms=round(f["median_s"] * 1e3, 3), fwd_bwd_ms=round(fb["median_s"] * 1e3, 3))
            if on: res[key]["output_rel_diff"] = rel(out, res.pop("_out"))
            else: res["_out"] = out.detach()
            print("lora", key, json.dumps(res[key]), flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="hidden 256, 2 heads, rank 4, 4×10×14 tokens, 24 text, CPU")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--backend", help="torch.compile backend (default: inductor; aot_eager with --tiny)")
    p.add_argument("--no-alone", action="store_true", help="skip the per-lever timings (qk alone, LoRA layer alone)")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    if a.tiny: shape = dict(hidden=256, heads=2, rank=4, grid=(4, 10, 14), text=24)
    else: shape = dict(hidden=4096, heads=32, rank=16, grid=(24, 30, 52), text=512)
    device = torch.device("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    backend = a.backend or ("aot_eager" if a.tiny else "inductor")
    model = build(shape["hidden"], shape["heads"], shape["rank"], device)
    args = inputs(model, shape["grid"], shape["text"], device)
    num_cond = shape["grid"][1] * shape["grid"][2]                 # one conditioning frame (image-to-video)
    N = args[0].shape[1]
    result = dict(**provenance(), backend=backend, tokens=N, **shape | dict(grid=list(shape["grid"])),
                  num_cond=num_cond, steps=a.steps, variants={k: VARIANTS[k] for k in a.variants})
    result["block"] = block_variants(model, args, a.variants, device, a.steps, backend, num_cond)
    if not a.no_alone:
        result["qk_alone"] = qk_alone(model, N, shape["grid"], device, 2 * a.steps, backend)
        result["lora_alone"] = lora_alone(N, shape["hidden"], shape["rank"], device, 2 * a.steps)
    return emit(result, a.json)


if __name__ == "__main__":
    main()
