"""Wan 2.1 VAE encode/decode cost at the training shape, through longcat_nb.caching's encode_frames / decode_latents.

    python benchmarks/bench_vae.py                 # CUDA: full-size Wan 2.1 VAE, random weights, bf16, 93×480×832
    python benchmarks/bench_vae.py --tiny          # CPU smoke test: the tiny checkpoint's VAE config, 9×64×64
    python benchmarks/bench_vae.py --json out.json # also write the result there

Times are the median of --repeats timed calls after one warm-up call (whose time is reported as `first_s`), with
CUDA synchronised; peak memory is torch.cuda.max_memory_allocated over the timed calls. Each measurement runs with
diffusers' tiling off and on. A failure (e.g. out of memory) is reported in the JSON and the rest still runs.
Prints one JSON line.
"""
import argparse, inspect, json, platform, statistics, sys, time
from pathlib import Path

import torch
from provenance import provenance   # benchmarks/provenance.py: date, commit, GPU, torch, command

# The released LongCat-Video vae/config.json is Wan 2.1's: diffusers' AutoencoderKLWan defaults must equal it.
WAN21_VAE_CONFIG = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                        temperal_downsample=[False, True, True], dropout=0.0)


def _sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def measure(fn, device, repeats: int) -> dict:
    "Warm-up call, then `repeats` timed calls: first_s, median_s, times_s, peak_gib (CUDA)."
    try:
        _sync(device); t = time.perf_counter(); out = fn(); _sync(device)
        first = time.perf_counter() - t
        times = []
        if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
        for _ in range(repeats):
            _sync(device); t = time.perf_counter(); out = fn(); _sync(device)
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return {"first_s": round(first, 4), "median_s": round(statistics.median(times), 4),
                "times_s": [round(x, 4) for x in times], "peak_gib": peak and round(peak, 3),
                "finite": bool(torch.isfinite(out).all()), "out_shape": list(out.shape)}
    except Exception as e:  # keep going: report what failed
        if device.type == "cuda": torch.cuda.empty_cache()
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny VAE config and 9×64×64 clip (CPU smoke test)")
    p.add_argument("--frames", type=int, default=None, help="clip frames, (F-1) %% 4 == 0 (default 93; tiny 9)")
    p.add_argument("--width", type=int, default=None, help="default 832; tiny 64")
    p.add_argument("--height", type=int, default=None, help="default 480; tiny 64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--json", default=None, help="also write the result to this file")
    a = p.parse_args(argv)

    from diffusers import AutoencoderKLWan
    from longcat_nb.caching import decode_latents, default_dtype, encode_frames
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = default_dtype(device)
    frames, width, height = a.frames or (9 if a.tiny else 93), a.width or (64 if a.tiny else 832), a.height or (64 if a.tiny else 480)
    if a.tiny:
        from longcat_nb.tiny import TINY_VAE_CONFIG
        config = TINY_VAE_CONFIG
    else: config = {}
    torch.manual_seed(0)
    with torch.device(device): vae = AutoencoderKLWan(**config)
    vae = vae.to(dtype).eval().requires_grad_(False)
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    defaults_match = all(defaults[k].default == v for k, v in WAN21_VAE_CONFIG.items())
    x = torch.rand(1, 3, frames, height, width, device=device) * 2 - 1

    result = {"bench": "vae", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."), "tiny": a.tiny,
              "frames": frames, "width": width, "height": height, "repeats": a.repeats,
              "params": sum(p.numel() for p in vae.parameters()), "defaults_match_wan21": defaults_match}
    latents = None
    with torch.no_grad():
        for tiling in (False, True):
            vae.enable_tiling() if tiling else vae.disable_tiling()
            tag = "tiled" if tiling else "plain"
            result[f"encode_{tag}"] = measure(lambda: encode_frames(vae, x), device, a.repeats)
            if latents is None:
                try: latents = encode_frames(vae, x)
                except Exception: latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device)
            result[f"decode_{tag}"] = measure(lambda: decode_latents(vae, latents), device, a.repeats)
    result = {**provenance(), **result}
    line = json.dumps(result)
    print(line)
    if a.json: Path(a.json).write_text(line + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
