"""Profile the trainer's own LoRA step, variant by variant: step time, peak memory, time by kernel kind and by module.

Each variant runs in its own process: a random bf16 transformer (full size on CUDA, built on the meta device and
materialised on the GPU as in bench_model.py), configured by the trainer's `training.make_trainable` from a config,
then `training._optimizer_step` — the trainer's step: `flow_matching_loss` under `model.compute_autocast`, backward,
clipping, the non-finite check, the LoRA norms, AdamW, the schedule — on random cached-batch tensors (832×480×93:
latents [1, 16, 24, 60, 104], 512 text tokens of which 120 real; T2V, or I2V with `--i2v`). 2 warm-up steps, then
`--steps` timed steps (median), then one more under `torch.profiler`, grouped by kernel kind (matmul, attention,
norm/reduce, triton, elementwise/copy; device time on CUDA, CPU self time on the CPU) and by module (forward and
recompute time of each module kind, blocks merged; backward kernels by autograd node).

Variants (config keys on top of the defaults, rank 16):
  before         the trainer before issue 14: PEFT's fp32 LoRA-input cast on, attention recomputed
  lora_fix       the LoRA input cast off under autocast (lora.set_lora_input_cast)
  keep           + checkpoint_attention "keep" (self-attention kept through the checkpointed backward)
  default        what the trainer picks now from the defaults (checkpoint_attention "auto" → the planner's choice)
  compiled       lora_fix + compile_transformer
  compiled_keep  keep + compile_transformer (the combination `auto` does not pick until measured)
  bsa_compiled_keep  compiled_keep with block-sparse attention (bsa_kernel auto: the Triton op on CUDA; issue 23)
  bare           bench_model.py's loop: bf16 LoRA from `add_adapter`, no autocast, MSE to a random target

On the device (from the repository root, torch 2.11 + CUDA): each variant takes ~2 min at full size (build, 2 warm-up
and `--steps` timed ~20 s steps, one profiled step), compiled ones more, so stay under a 10-minute call with groups:

    python benchmarks/profile_step.py --variants before,lora_fix,keep --steps 2 --json profile_a.json
    python benchmarks/profile_step.py --variants default,bare --steps 2 --json profile_b.json
    python benchmarks/profile_step.py --variants compiled,compiled_keep --steps 2 --json profile_c.json

Compiled variants have no by-module table (module hooks inside compiled blocks would break their graphs).

On the CPU, at tiny size (checks the wiring, < 1 min): `python benchmarks/profile_step.py --tiny`.
Prints one JSON line per variant; `--json OUT` writes them all to OUT.
"""
import argparse, contextlib, json, os, statistics, subprocess, sys, time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import kernel_kind                        # noqa: E402
from bench_model import build_model, sync                    # noqa: E402

VARIANTS = {
    "before": dict(checkpoint_attention="recompute"), "lora_fix": dict(checkpoint_attention="recompute"),
    "keep": dict(checkpoint_attention="keep"), "default": {},
    "compiled": dict(checkpoint_attention="recompute", compile_transformer=True),
    "compiled_keep": dict(checkpoint_attention="keep", compile_transformer=True), "bare": {},
    "bsa_compiled_keep": dict(checkpoint_attention="keep", compile_transformer=True, attention_implementation="bsa"),
}


def op_kind(name: str, cuda: bool) -> str:
    "Kernel kind of a CUDA kernel (bench_compile's classes) or, on the CPU, of an aten op."
    if cuda: return kernel_kind(name)
    n = name.lower()
    if any(k in n for k in ("::mm", "addmm", "bmm", "::matmul", "baddbmm")): return "matmul"
    if "scaled_dot_product" in n or "flash_attention" in n: return "attention"
    if any(k in n for k in ("norm", "mean", "sum", "var", "softmax", "amax")): return "norm/reduce"
    if any(k in n for k in ("copy", "to_copy", "add", "mul", "sub", "div", "cat", "silu", "gelu", "neg", "fill", "zero",
                            "clone", "contiguous", "where", "exp", "pow", "sqrt", "rsqrt", "cos", "sin", "stack", "pad")):
        return "elementwise/copy"
    return "other"


def label_modules(model):
    """Profiler ranges around every module's forward (also in recompute), named by module path without block indices;
    returns the hook handles. Not for compiled blocks: hooks run inside the compiled call and would break its graph."""
    enter, leave = torch.ops.profiler._record_function_enter_new, torch.ops.profiler._record_function_exit
    stack, handles = [], []
    def pre(module, args, name): stack.append(enter("module::" + name, None))
    def post(module, args, out): leave(stack.pop())          # returns None: the module's output stays as it is
    for name, m in model.named_modules():
        short = ".".join(p for p in name.split(".") if not p.isdigit() and p != "default") or "model"
        handles.append(m.register_forward_pre_hook(lambda mod, args, s=short: pre(mod, args, s)))
        handles.append(m.register_forward_hook(post, always_call=True))
    return handles


def make_batch(shape, text_tokens, valid, caption_channels, device, cond: int):
    "A cached batch as `CachedDataset` yields it (fp32 latents, bf16 text), on `device`."
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, text_tokens, dtype=torch.long); mask[:, :valid] = 1
    return dict(latents=torch.randn(shape, generator=g).to(device),
                text_emb=torch.randn(1, text_tokens, caption_channels, generator=g).to(device, torch.bfloat16),
                text_mask=mask.to(device), num_cond_latents=cond)


def trainer_run(model, cfg, device, batch):
    "The namespace `training._optimizer_step` works on, as `_prepare_run` builds it (one process, no accelerate wrapping)."
    from accelerate import Accelerator
    from longcat_nb import training
    acc = Accelerator(cpu=device.type != "cuda", mixed_precision="no")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = training._make_optimizer(cfg, params, device)
    model, opt = acc.prepare(model, opt)
    L, C = batch["text_emb"].shape[1:]
    empty = (torch.zeros(L, C, dtype=torch.bfloat16, device=device), torch.zeros(L, dtype=torch.long, device=device))
    return SimpleNamespace(accelerator=acc, model=model, params=params, optimizer=opt, output_dir=Path("."), empty_prompt=empty,
                           scheduler=training.make_lr_scheduler(cfg, opt, 1000), unwrapped=model,
                           state=training.TrainState(generator=torch.Generator().manual_seed(0)))


def one_variant(a) -> dict:
    from longcat_nb import training
    from longcat_nb.config import LORA_TARGETS, parse_config
    from longcat_nb.model import TINY_DIT_CONFIG, autocasts
    cuda = torch.cuda.is_available() and not a.tiny          # --tiny: the CPU, on a GPU machine too
    device = torch.device("cuda" if cuda else "cpu")
    cfg = parse_config({"lora_rank": a.rank, "report_to": "none", **VARIANTS[a.one]})
    config = dict(TINY_DIT_CONFIG) if a.tiny else {}
    shape = (1, 16, (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8)
    tokens = shape[2] * shape[3] // 2 * shape[4] // 2
    t0 = time.perf_counter()
    torch.manual_seed(0)                                      # the same base and LoRA in every variant
    model = build_model(config, device, torch.bfloat16).train()
    autocast = autocasts(device, cfg.mixed_precision) or a.tiny      # --tiny: CPU bf16 autocast, as on CUDA
    keep = training.keeps_attention(cfg, tokens, device)
    if a.one == "bare":
        from peft import LoraConfig
        model.requires_grad_(False)
        model.add_adapter(LoraConfig(r=a.rank, lora_alpha=a.rank, target_modules=list(LORA_TARGETS)))
        model.enable_gradient_checkpointing()
    else: training.make_trainable(model, cfg, keep, lora_input_cast=a.one == "before" or not autocast)
    batch = make_batch(shape, a.text_tokens, a.valid_tokens, model.config.caption_channels, device, int(a.i2v))
    result = dict(variant=a.one, device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
                  tokens=tokens, latents=list(shape), rank=a.rank, i2v=a.i2v, keep_attention=keep and a.one != "bare",
                  lora_input_cast=a.one != "bare" and next(l.cast_input_dtype_enabled for l in training.lora_layers(model).values()),
                  compiled=cfg.compile_transformer, build_s=round(time.perf_counter() - t0, 1))
    if a.one == "bare":
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        x = batch["latents"]
        target = torch.randn_like(x)
        def step():
            with contextlib.nullcontext():                  # bench_model.py: no autocast
                loss = torch.nn.functional.mse_loss(model(x, torch.full((1,), 700.0, device=device), batch["text_emb"],
                                                          batch["text_mask"], num_cond_latents=int(a.i2v)).sample, target)
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
            return loss.item()
    else:
        run = trainer_run(model, cfg, device, batch)
        if a.tiny:                                            # the trainer's autocast is CUDA's: mirror it on the CPU
            training.compute_autocast = lambda d, mp: torch.autocast("cpu", dtype=torch.bfloat16)
        step = lambda: float(training._optimizer_step(run, cfg, training.micro_batches([batch], run.state.generator, cfg))[0])
    times, losses = [], []
    for i in range(2 + a.steps):
        sync(device)
        if i == 2 and cuda: torch.cuda.reset_peak_memory_stats()
        s = time.perf_counter()
        losses.append(step())
        sync(device)
        times.append(time.perf_counter() - s)
    result.update(warmup_s=[round(t, 2) for t in times[:2]], times_s=[round(t, 3) for t in times[2:]],
                  median_s=round(statistics.median(times[2:]), 3), losses=losses,
                  peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
    from torch.profiler import ProfilerActivity, profile
    handles = [] if cfg.compile_transformer else label_modules(model)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step(); sync(device)
    for h in handles: h.remove()
    kinds, modules, backward = defaultdict(float), defaultdict(float), defaultdict(float)
    for e in prof.key_averages():
        if cuda:
            t = getattr(e, "self_device_time_total", 0) if e.device_type.name == "CUDA" else 0
            total = getattr(e, "device_time_total", 0)
        else: t, total = e.self_cpu_time_total, e.cpu_time_total
        if t and not e.key.startswith(("module::", "autograd::", "Optimizer", "ProfilerStep")): kinds[op_kind(e.key, cuda)] += t / 1e3
        if e.key.startswith("module::"): modules[e.key.removeprefix("module::")] += total / 1e3
        if e.key.startswith("autograd::engine::evaluate_function: "):
            backward[e.key.removeprefix("autograd::engine::evaluate_function: ")] += total / 1e3
    top = lambda d, n: {k: round(v, 1) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]}
    result.update(by_kind_ms=top(kinds, 10), by_module_ms=top(modules, 25), backward_ms=top(backward, 15),
                  profiled="CUDA device time" if cuda else "CPU self time (ops) / CPU total (modules)")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="before,lora_fix,keep,default,compiled,compiled_keep,bare")
    p.add_argument("--steps", type=int, default=3, help="timed steps after 2 warm-up steps")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--frames", type=int, default=93)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--valid-tokens", type=int, default=120)
    p.add_argument("--i2v", action="store_true", help="one conditioning latent frame (num_cond_latents = 1)")
    p.add_argument("--tiny", action="store_true", help="TINY_DIT_CONFIG, small latents, CPU with a bf16 autocast")
    p.add_argument("--json", type=Path)
    p.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)      # a child process: run one variant
    a = p.parse_args(argv)
    if a.tiny:
        a.frames, a.width, a.height, a.text_tokens, a.valid_tokens, a.rank = 9, 64, 48, 16, 5, 4
        a.variants = a.variants.replace(",compiled_keep", "").replace(",compiled", "")   # Inductor on 2 CPU cores: minutes
        torch.set_num_threads(1)                              # tiny ops: threads only wait on each other
    elif not torch.cuda.is_available(): raise SystemExit("no CUDA device: use --tiny on the CPU")
    if a.one:
        print(json.dumps(one_variant(a)), flush=True)
        return
    lines = []
    for v in a.variants.split(","):
        if v not in VARIANTS: raise SystemExit(f"unknown variant {v!r}: use {', '.join(VARIANTS)}")
        if a.tiny: line = json.dumps(one_variant(argparse.Namespace(**{**vars(a), "one": v})))   # small: in this process
        else:                                                 # full size: a fresh process (memory, compile caches) per variant
            args = [sys.executable, __file__, "--one", v] + [x for x in (argv if argv is not None else sys.argv[1:])]
            r = subprocess.run(args, capture_output=True, text=True, env=os.environ)
            out = [l for l in r.stdout.splitlines() if l.startswith("{")]
            line = out[-1] if r.returncode == 0 and out else json.dumps(dict(variant=v, error=(r.stderr or r.stdout)[-3000:]))
        print(line, flush=True)
        lines.append(line)
    if a.json: a.json.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
