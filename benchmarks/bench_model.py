"""Benchmark the LongCat-Video transformer: forward, LoRA training step, CFG sampling step, peak memory.

On CUDA the full 13.6B config is built on the meta device and materialised directly in bf16 on the GPU
(random weights, small std), never in fp32 on the CPU. Latents are [1, 16, T, H/8, W/8] for `--frames`,
`--height`, `--width` (default 93 × 480 × 832 → [1, 16, 24, 60, 104], 37,440 tokens), text [1, 512, 4096]
with padding. Each part runs on its own: a failure (say, OOM in the LoRA step) is reported and the rest go on.

    python benchmarks/bench_model.py --json runs/bench_model.json            # GPU, full size
    python benchmarks/bench_model.py --tiny                                  # CPU smoke test (TINY_DIT_CONFIG)

Prints one JSON line; `--json OUT` also writes it to OUT.
"""
import argparse, json, statistics, time, traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from longcat_nb.config import LORA_TARGETS
from longcat_nb.model import ATTENTION_BACKENDS, TINY_DIT_CONFIG, LongCatVideoTransformer3DModel
from provenance import provenance   # benchmarks/provenance.py: date, commit, GPU, torch, command


def add_shape_args(p: argparse.ArgumentParser):
    "The attention backend and video shape options shared by the GPU benchmarks (default 832×480, 93 frames)."
    p.add_argument("--attn", default="auto", choices=ATTENTION_BACKENDS, help="attention backend")
    p.add_argument("--frames", type=int, default=93, help="video frames; (frames - 1) %% 4 == 0")
    p.add_argument("--width", type=int, default=832, help="pixels, multiple of 16")
    p.add_argument("--height", type=int, default=480, help="pixels, multiple of 16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(p)
    p.add_argument("--steps", type=int, default=40, help="sampling steps, for the estimated CFG sampling time")
    p.add_argument("--repeats", type=int, default=5, help="timed forwards (after one warm-up)")
    p.add_argument("--train-steps", type=int, default=3, help="timed LoRA steps (after one warm-up)")
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--valid-tokens", type=int, default=120, help="real (unpadded) text tokens; the rest are pads")
    p.add_argument("--lora-rank", type=int, default=128)
    p.add_argument("--tiny", action="store_true", help="TINY_DIT_CONFIG and small latents; runs on CPU")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.tiny:
        args.frames, args.width, args.height, args.text_tokens, args.valid_tokens = 9, 64, 48, 16, 5
    if (args.frames - 1) % 4 or args.width % 16 or args.height % 16:
        p.error(f"--frames {args.frames} --width {args.width} --height {args.height}: need (frames - 1) % 4 == 0 "
                "and width, height multiples of 16")
    return args


def build_model(config: dict, device: torch.device, dtype: torch.dtype, std: float = 0.02):
    "Random model built on meta and materialised on `device` in `dtype`: Linear/conv weights ~ N(0, std), biases 0, norms 1."
    with torch.device("meta"):
        model = LongCatVideoTransformer3DModel(**config)
    model = model.to(dtype=dtype).to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"): p.fill_(1.0)
            elif p.ndim == 1: p.zero_()
            else: p.normal_(0, std)
    return model.eval()


def make_inputs(args, config, device, batch=1):
    in_ch, text_ch = config["in_channels"], config["caption_channels"]
    latent = ((args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    g = torch.Generator(device=device).manual_seed(0)
    mask = torch.zeros(batch, args.text_tokens, dtype=torch.long, device=device)
    mask[:, :args.valid_tokens] = 1
    return dict(hidden_states=torch.randn(batch, in_ch, *latent, generator=g, device=device),
                timestep=torch.full((batch,), 700.0, device=device),
                encoder_hidden_states=torch.randn(batch, 1, args.text_tokens, text_ch, generator=g, device=device),
                encoder_attention_mask=mask)


def emit(result: dict, json_path=None):
    "Print `result` as one JSON line, and write it to `json_path` when given."
    line = json.dumps({**provenance(), **result})
    print(line)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(line + "\n")


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def timed(fn, repeats, device):
    "Median and all wall times of `repeats` calls after one warm-up; peak GiB allocated over the timed calls."
    fn()
    sync(device)
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return dict(median_s=statistics.median(times), times_s=[round(t, 4) for t in times], peak_gib=peak)


def guarded(name, results, device, fn):
    "Run one part; record its result or its error, then free what it left on the GPU."
    try:
        results[name] = fn()
    except Exception as e:  # report and carry on with the other parts (OOM included)
        results[name] = dict(error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc(limit=3)[-2000:])
    if device.type == "cuda": torch.cuda.empty_cache()
    print(f"# {name}: {json.dumps(results[name])}", flush=True)


def forward_part(model, inputs, repeats, device):
    def run():
        with torch.no_grad(): return model(**inputs).sample
    return timed(run, repeats, device)


def lora_part(model, inputs, args, device):
    "peft LoRA (rank r, alpha r) on LORA_TARGETS, base frozen, gradient checkpointing, MSE to a random target, AdamW."
    from peft import LoraConfig
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, target_modules=list(LORA_TARGETS)))
    model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    target = torch.randn_like(inputs["hidden_states"], dtype=torch.float32)

    def step():
        loss = F.mse_loss(model(**inputs).sample, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    result = timed(step, args.train_steps, device)
    result |= dict(trainable_params=sum(p.numel() for p in params), loss_finite=bool(torch.isfinite(step()).item()))
    return result


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("no CUDA device: the full 13.6B config needs a GPU; use --tiny for a CPU smoke test")
    config = dict(TINY_DIT_CONFIG) if args.tiny else {}          # {}: the constructor defaults, the released 13.6B
    dtype = torch.bfloat16
    start = time.perf_counter()
    model = build_model(config, device, dtype)
    model.set_attention_backend(args.attn)
    full_config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    inputs = make_inputs(args, full_config, device)
    sync(device)
    results = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                   attn=args.attn, tiny=args.tiny, dtype=str(dtype), frames=args.frames, width=args.width,
                   height=args.height, latents=list(inputs["hidden_states"].shape),
                   tokens=inputs["hidden_states"][0, 0].numel() // 4, text_tokens=args.text_tokens,
                   valid_text_tokens=args.valid_tokens, params=sum(p.numel() for p in model.parameters()),
                   weights_gib=sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30,
                   build_s=round(time.perf_counter() - start, 2))
    with torch.no_grad():
        finite = bool(torch.isfinite(model(**inputs).sample).all().item())
    results["output_finite"] = finite

    guarded("forward", results, device, lambda: forward_part(model, inputs, args.repeats, device))
    batch2 = make_inputs(args, full_config, device, batch=2)
    guarded("cfg_batch2_forward", results, device, lambda: forward_part(model, batch2, args.repeats, device))
    del batch2
    fwd = results["forward"].get("median_s")
    b2 = results["cfg_batch2_forward"].get("median_s")
    results["cfg_step"] = dict(two_forwards_s=None if fwd is None else 2 * fwd, batch2_forward_s=b2, steps=args.steps,
                               sampling_estimate_s=None if fwd is None else args.steps * min(2 * fwd, b2 or 2 * fwd))
    guarded("lora_step", results, device, lambda: lora_part(model, inputs, args, device))

    emit(results, args.json)


if __name__ == "__main__":
    main()
