"""`longcat-nb sample`, the whole command (load, prompt encoding, denoising, VAE decode, mp4 written), timed per variant
(issue 22's sampling targets: a 40-step CFG video at 832×480×93 ≤ 240 s, the distilled 16-step preview ≤ 50 s).

Each variant is one fresh `longcat-nb sample` process on the checkpoint (a config naming only it and an output folder,
plus the variant's config keys), timed from launch to exit; the stderr tail is kept when it fails. The full-size random
checkpoint of fullscale_e2e.py has a 2-layer text encoder at the real width (its encode costs less than the release's
UMT5-XXL) and no distilled LoRA: `--with-random-distilled-lora` writes a random one of the released rank and targets.

    python benchmarks/bench_sample_cli.py CKPT --variants distilled,distilled_compiled --json $OUT/sample_cli.json
    python benchmarks/bench_sample_cli.py TINY_CKPT --size 64x48 --frames 5 --variants distilled      # CPU smoke test
"""
import argparse, json, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_sample_tab import write_random_distilled_lora   # the Sample tab's bench needs the same file
from provenance import emit, provenance                    # benchmarks/provenance.py

# name: (extra `longcat-nb sample` arguments, extra config keys)
VARIANTS = {
    "cfg40": (["--steps", "40", "--guidance", "4"], {}),
    "cfg40_fused": (["--steps", "40", "--guidance", "4"], {"fused_elementwise": "on"}),
    "cfg40_compiled": (["--steps", "40", "--guidance", "4", "--compile"], {}),
    "distilled": (["--distilled"], {}),
    "distilled_fused": (["--distilled"], {"fused_elementwise": "on"}),
    "distilled_compiled": (["--distilled", "--compile"], {}),
}


def run(name: str, ckpt: Path, work: Path, size: str, frames: int) -> dict:
    "One `longcat-nb sample` process of variant `name`: wall seconds, exit code, the mp4's size (or the stderr tail)."
    argv, keys = VARIANTS[name]
    config = work / f"{name}.json"
    config.write_text(json.dumps({"pretrained_model_name_or_path": str(ckpt), "output_dir": str(work / "out"),
                                  **keys}))
    video = work / f"{name}.mp4"
    cmd = [sys.executable, "-c", "import sys; from longcat_nb.cli import main; sys.exit(main(sys.argv[1:]))",
           "sample", "--config", str(config), "--prompt",
           "a red fox runs through fresh snow in a pine forest, morning light", "--size", size, "--frames",
           str(frames), "--output", str(video), *argv]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    row = dict(variant=name, args=argv, config_keys=keys, wall_s=round(time.perf_counter() - t0, 1), rc=r.returncode)
    if r.returncode or not video.is_file():
        row["stderr_tail"] = r.stderr[-1500:]
    else:
        row["video_bytes"] = video.stat().st_size
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", type=Path)
    p.add_argument("--variants", default="distilled,distilled_compiled", help=f"of {', '.join(VARIANTS)}")
    p.add_argument("--size", default="832x480")
    p.add_argument("--frames", type=int, default=93)
    p.add_argument("--with-random-distilled-lora", action="store_true")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}: use {', '.join(VARIANTS)}")
    if a.with_random_distilled_lora:
        write_random_distilled_lora(a.ckpt)
    work = Path(tempfile.mkdtemp(prefix="bench_sample_cli_"))
    return emit({**provenance(), "size": a.size, "frames": a.frames,
                 "rows": [run(n, a.ckpt.resolve(), work, a.size, a.frames) for n in names]}, a.json)


if __name__ == "__main__":
    main()
