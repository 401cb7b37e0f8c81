"""Benchmark LongCatVideoPipeline sampling: time per denoising step with CFG (guidance 4) and without (guidance 1).

On CUDA the full 13.6B transformer is built on the meta device and materialised directly in bf16 on the GPU with
random weights (bench_model.build_model), never in fp32 on the CPU. No VAE and no text encoder are loaded: the
prompts are random precomputed embeddings [1, 512, 4096] with padding, and output_type="latent" skips the decode.
Each run samples `--warmup + --steps` steps; the step callback timestamps each step (after a device sync) and
the median over the last `--steps` steps is reported, with the peak GPU memory of the run. From these:
a 40-step CFG video and a 16-step distilled video (guidance 1), denoising only.

    python benchmarks/bench_sampling.py --json runs/bench_sampling.json     # GPU, 832×480, 93 frames
    python benchmarks/bench_sampling.py --tiny                              # CPU smoke test (TINY_DIT_CONFIG)

Prints one JSON line; `--json OUT` also writes it to OUT.
"""
import argparse, json, statistics, sys, time, traceback
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import add_shape_args, build_model, emit, sync  # one way to build a random full-size model on the GPU

from longcat_nb.model import TINY_DIT_CONFIG
from longcat_nb.sampling import LongCatVideoPipeline, latent_shape


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(p)
    p.add_argument("--steps", type=int, default=3, help="timed denoising steps per run (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed denoising steps at the start of each run")
    p.add_argument("--valid-tokens", type=int, default=120, help="real (unpadded) prompt tokens of 512")
    p.add_argument("--tiny", action="store_true", help="TINY_DIT_CONFIG and small videos; runs on CPU")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.tiny: args.frames, args.width, args.height, args.valid_tokens = 9, 64, 48, 5
    if args.steps < 1 or args.warmup < 1: p.error("--steps and --warmup must be at least 1")
    return args


def prompt_embeds(channels, valid_tokens, device, dtype, seed):
    "Random text embeddings [1, 512, channels] and a mask [1, 512] with `valid_tokens` real tokens."
    g = torch.Generator(device=device).manual_seed(seed)
    emb = torch.randn(1, 512, channels, generator=g, device=device).to(dtype)
    mask = torch.zeros(1, 512, dtype=torch.long, device=device)
    mask[:, :valid_tokens] = 1
    return emb, mask


def time_steps(pipe, args, guidance, device, dtype):
    "Sample `warmup + steps` steps at `guidance`; median seconds a step over the timed steps, peak GiB."
    channels = pipe.transformer.config.caption_channels
    emb, mask = prompt_embeds(channels, args.valid_tokens, device, dtype, 0)
    neg, neg_mask = prompt_embeds(channels, 1, device, dtype, 1)  # the empty prompt: just </s>
    stamps = []

    def stamp(p, i, t, kw):
        sync(device)
        stamps.append(time.perf_counter())

    if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    pipe(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask,
         width=args.width, height=args.height, num_frames=args.frames, num_inference_steps=args.warmup + args.steps,
         guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(0), output_type="latent",
         callback_on_step_end=stamp)
    per_step = [b - a for a, b in zip([start] + stamps, stamps)][args.warmup:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return dict(median_s=statistics.median(per_step), steps_s=[round(s, 4) for s in per_step],
                peak_gib=None if peak is None else round(peak, 2))


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = TINY_DIT_CONFIG if args.tiny else {}  # {} → the class defaults, the released 13.6B config
    result = dict(bench="sampling", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                  dtype=str(dtype).removeprefix("torch."), attn=args.attn, tiny=args.tiny,
                  latents=list(latent_shape(args.width, args.height, args.frames)), torch=torch.__version__,
                  date=time.strftime("%Y-%m-%d"))
    t0 = time.perf_counter()
    transformer = build_model(config, device, dtype)
    transformer.set_attention_backend(args.attn)
    sync(device)
    result["build_s"] = round(time.perf_counter() - t0, 2)
    pipe = LongCatVideoPipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=12.0))
    pipe.set_progress_bar_config(disable=True)
    for name, guidance in [("cfg", 4.0), ("no_cfg", 1.0)]:
        try:
            result[name] = time_steps(pipe, args, guidance, device, dtype)
        except Exception as e:  # e.g. OOM: report it and go on
            result[name] = dict(error=f"{type(e).__name__}: {e}"[:500])
            traceback.print_exc()
            if device.type == "cuda": torch.cuda.empty_cache()
    if "median_s" in result.get("cfg", {}): result["video_40_steps_cfg_s"] = round(40 * result["cfg"]["median_s"], 1)
    if "median_s" in result.get("no_cfg", {}):
        result["video_16_steps_distilled_s"] = round(16 * result["no_cfg"]["median_s"], 1)
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
