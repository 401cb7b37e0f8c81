"""Benchmark video continuation, a long video and the 720p refinement through `LongCatVideoPipeline` (issue 16).

Loads a checkpoint in the released layout (the real one, or the full-size random one `tools/fullscale_e2e.py` builds in
WORKDIR/ckpt) on the GPU in bf16 and runs, each part timed (after a device sync) with its peak GPU memory:
- `continuation`: one `continue_video` segment of `--frames` frames conditioned on the last 13 frames of a random
  480p clip, guidance 4, `--steps` base steps with the release's `enhance_hf` schedule (so `--steps` above t = 500
  plus 10), with the conditioning KV cache;
- `kv_cache`: median seconds a denoising step with and without the KV cache (same segment, `--kv-steps` steps of
  the plain schedule) and the saving per step;
- `long_video`: `generate_long_video` with `--segments` segments (text-to-video, then continuations), one mp4;
- `refine`: `refine` of a random `--frames`-frame 480p clip to 720p, 30 fps (`--refine-steps` base steps → the
  `t_thresh` 0.5 schedule), with `lora/refinement_lora.safetensors` (a random rank-128 one in the official format is
  written to WORKDIR when the checkpoint has none, e.g. fullscale_e2e's) and block-sparse attention when available.
Per-step medians come from the step callback. The 50-step figures of the release are extrapolated from them
(`*_50_steps_s`). Prints one JSON line; `--json OUT` also writes it.

The command for the H200 (after `python tools/fullscale_e2e.py /tmp/e2e --steps 1` built /tmp/e2e/ckpt):

    PYTHONUNBUFFERED=1 python benchmarks/bench_long_video.py /tmp/e2e/ckpt --work /tmp/e2e/bench \\
        --steps 2 --kv-steps 3 --refine-steps 50 --segments 3 --json $OUT/bench_long_video.json

CPU smoke test on the tiny checkpoint: `python benchmarks/bench_long_video.py --tiny`.
"""
import argparse, json, statistics, sys, tempfile, time, traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import emit, sync  # one device sync and one JSON writer for all benchmarks

from longcat_nb.sampling import LongCatVideoPipeline, _sparse_attention_ready, flow_timesteps, long_video_frames

PROMPT = "a red ball rolls along a wooden table, then bounces off the edge"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint directory in the released layout")
    p.add_argument("--work", type=Path, help="folder for the mp4s and a random refinement LoRA (default: a temp dir)")
    p.add_argument("--size", default="832x480", help="WIDTHxHEIGHT of the 480p stage")
    p.add_argument("--frames", type=int, default=93)
    p.add_argument("--cond-frames", type=int, default=13)
    p.add_argument("--steps", type=int, default=50, help="base steps of continuation and long video segments")
    p.add_argument("--kv-steps", type=int, default=3, help="steps of each KV-cache comparison run")
    p.add_argument("--refine-steps", type=int, default=50, help="base steps of the refinement (t_thresh 0.5 keeps those below t = 500)")
    p.add_argument("--segments", type=int, default=3)
    p.add_argument("--parts", default="continuation,kv_cache,long_video,refine")
    p.add_argument("--vae-tiling", action="store_true", help="decode/encode with VAE tiling")
    p.add_argument("--tiny", action="store_true", help="the tiny checkpoint on CPU, small videos (a smoke test)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.tiny:
        from longcat_nb.tiny import tiny_checkpoint
        args.checkpoint = args.checkpoint or tiny_checkpoint()
        args.size, args.frames, args.cond_frames, args.steps, args.kv_steps, args.refine_steps = "64x48", 17, 5, 2, 2, 10
    if args.checkpoint is None: p.error("give the checkpoint directory (or --tiny)")
    args.width, args.height = map(int, args.size.split("x"))
    return args


def measure(fn, device):
    "Run `fn()`; (result, seconds, peak GiB or None)."
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return out, round(time.perf_counter() - t0, 2), None if peak is None else round(peak, 2)


def step_stamps(device):
    "A step callback that timestamps each step after a sync; `.stamps` holds them."
    def cb(p, i, t, kw):
        sync(device)
        cb.stamps.append(time.perf_counter())
    cb.stamps = []
    return cb


def median_step(cb, start, skip=1):
    steps = [b - a for a, b in zip([start] + cb.stamps, cb.stamps)][skip:]
    return round(statistics.median(steps), 3) if steps else None


def random_video(frames, width, height, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def refinement_lora(pipe, ckpt: Path, work: Path) -> Path:
    "The checkpoint's refinement LoRA, or a random rank-128 one in the official format for this transformer."
    path = ckpt / "lora" / "refinement_lora.safetensors"
    if path.is_file(): return path
    from longcat_nb.lora import REFINEMENT_LORA_TARGETS, write_official_lora
    return write_official_lora(work / "refinement_lora.safetensors", pipe.transformer, rank=128, targets=REFINEMENT_LORA_TARGETS)


def run_part(result, name, fn):
    try: result[name] = fn()
    except Exception as e:  # e.g. out of memory: report it and go on with the next part
        result[name] = dict(error=f"{type(e).__name__}: {e}"[:500])
        traceback.print_exc()
        if torch.cuda.is_available(): torch.cuda.empty_cache()


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_long_video_"))
    work.mkdir(parents=True, exist_ok=True)
    result = dict(bench="long_video", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                  checkpoint=str(args.checkpoint), size=args.size, frames=args.frames, cond_frames=args.cond_frames,
                  torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
    pipe, result["load_s"], _ = measure(lambda: LongCatVideoPipeline.from_pretrained(
        args.checkpoint, torch_dtype=dtype, device=device), device)
    pipe.set_progress_bar_config(disable=True)
    if args.vae_tiling: pipe.enable_vae_tiling()
    pipe.encode_prompt(PROMPT)                                       # prompts cached: the text encoder is not timed
    size = dict(width=args.width, height=args.height, num_frames=args.frames)
    clip = random_video(args.frames, args.width, args.height)
    parts = args.parts.split(",")

    def continuation():
        cb = step_stamps(device)
        t0 = time.perf_counter()
        out, secs, peak = measure(lambda: pipe.continue_video(
            clip, PROMPT, num_cond_frames=args.cond_frames, num_inference_steps=args.steps, guidance_scale=4.0,
            generator=torch.Generator().manual_seed(0), callback_on_step_end=cb, **size).frames, device)
        step = median_step(cb, t0)
        n = len(flow_timesteps(args.steps, enhance_hf=True))
        return dict(seconds=secs, peak_gib=peak, steps=n, median_step_s=step, output_frames=int(out.shape[1]),
                    segment_50_steps_s=None if step is None else round(len(flow_timesteps(50, enhance_hf=True)) * step, 1))

    def kv_cache():
        res = {}
        for kv in (True, False):
            cb = step_stamps(device)
            t0 = time.perf_counter()
            _, secs, peak = measure(lambda: pipe.continue_video(
                clip, PROMPT, num_cond_frames=args.cond_frames, num_inference_steps=args.kv_steps, enhance_hf=False,
                guidance_scale=4.0, kv_cache=kv, output_type="latent", generator=torch.Generator().manual_seed(0),
                callback_on_step_end=cb, **size), device)
            res["cached" if kv else "uncached"] = dict(seconds=secs, peak_gib=peak, median_step_s=median_step(cb, t0))
        a, b = res["cached"]["median_step_s"], res["uncached"]["median_step_s"]
        if a is not None and b is not None: res["saving_per_step_s"], res["saving_pct"] = round(b - a, 3), round(100 * (b - a) / b, 1)
        return res

    def long_video():
        frames, secs, peak = measure(lambda: pipe.generate_long_video(
            PROMPT, num_segments=args.segments, num_cond_frames=args.cond_frames, num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0), output_path=work / "long.mp4", progress=False, **size), device)
        assert len(frames) == long_video_frames(args.segments, args.frames, args.cond_frames)
        return dict(seconds=secs, peak_gib=peak, segments=args.segments, frames=len(frames), mp4=str(work / "long.mp4"))

    def refine():
        lora = refinement_lora(pipe, Path(args.checkpoint), work)
        out, secs, peak = measure(lambda: pipe.refine(
            clip, num_inference_steps=args.refine_steps, lora_path=lora, generator=torch.Generator().manual_seed(0),
            output_path=work / "refined.mp4"), device)
        return dict(seconds=secs, peak_gib=peak, steps=len(flow_timesteps(args.refine_steps, t_thresh=0.5)),
                    frames=len(out), size=f"{out.shape[2]}x{out.shape[1]}", sparse=_sparse_attention_ready(),
                    mp4=str(work / "refined.mp4"))

    for name, fn in [("continuation", continuation), ("kv_cache", kv_cache), ("long_video", long_video), ("refine", refine)]:
        if name in parts: run_part(result, name, fn)
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
