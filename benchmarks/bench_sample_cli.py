"""`longcat-nb sample`, the whole command (load, prompt encoding, denoising, VAE decode, mp4 written), timed per variant
(issue 22's sampling targets: a 40-step CFG video at 832×480×93 ≤ 240 s, the distilled 16-step preview ≤ 50 s).

Each variant is one fresh `longcat-nb sample` process on the checkpoint (a config naming only it and an output folder,
plus the variant's config keys), timed from launch to exit, and split into stages by when the command's own stderr
says so: start → the denoising bar's first line (imports, load, prompt encoding), → "denoised; decoding" (the steps),
→ exit (VAE decode, mp4 written). The stderr tail is kept when it fails. The full-size random
checkpoint of fullscale_e2e.py has a 2-layer text encoder at the real width (its encode costs less than the release's
UMT5-XXL) and no distilled LoRA: `--with-random-distilled-lora` writes a random one of the released rank and targets.

    python benchmarks/bench_sample_cli.py CKPT --variants distilled,distilled_compiled --json $OUT/sample_cli.json
    python benchmarks/bench_sample_cli.py TINY_CKPT --size 64x48 --frames 5 --variants distilled      # CPU smoke test
"""
import argparse, bisect, codecs, itertools, json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_sample_tab import write_random_distilled_lora   # the Sample tab's bench needs the same file
from provenance import emit, provenance                    # benchmarks/provenance.py

# name: (extra `longcat-nb sample` arguments, extra config keys). Since compile_transformer's auto compiles a sample of
# ≥ 32 forwards, the 40-step CFG video's default (cfg40_default, no flag) compiles as cfg40_compiled does; cfg40 keeps
# its eager blocks (--no-compile), as measured before that; the distilled preview's 16 forwards stay eager by default.
VARIANTS = {
    "cfg40_default": (["--steps", "40", "--guidance", "4"], {}),
    "cfg40": (["--steps", "40", "--guidance", "4", "--no-compile"], {}),
    "cfg40_fused": (["--steps", "40", "--guidance", "4", "--no-compile"], {"fused_elementwise": "on"}),
    "cfg40_compiled": (["--steps", "40", "--guidance", "4", "--compile"], {}),
    "distilled": (["--distilled"], {}),
    "distilled_fused": (["--distilled"], {"fused_elementwise": "on"}),
    "distilled_compiled": (["--distilled", "--compile"], {}),
}


DENOISE_BAR = re.compile(r"^\s*0%\|[^\n]*\| 0/\d+ \[", re.M)   # the pipeline's unlabelled step bar, as it starts
FIRST_STEP = re.compile(r"^\s*\d+%\|[^\n]*\| 1/\d+ \[", re.M)  # the bar redrawn after the first step
DECODING = "denoised; decoding"                              # `service.generate`'s line after the last step


def stages(chunks: list[tuple[float, str]], wall: float) -> dict:
    """Seconds per stage from `(seconds since launch, stderr text)` reads: `to_denoise_s` (imports, load, prompt
    encoding), `denoise_s` and of it `first_step_s` (a compiled run's compile), `decode_write_s`; each mark is timed by
    the read that brought its first character (a bar redraws after \\r, the decode line follows a bar's text
    unbroken); a stage whose marks are missing is left out."""
    text = "".join(t for _, t in chunks).replace("\r", "\n")
    ends = list(itertools.accumulate(len(t) for _, t in chunks))
    when = lambda pos: chunks[bisect.bisect_right(ends, pos)][0]
    bar, decode = DENOISE_BAR.search(text), text.find(DECODING)
    start = when(bar.start()) if bar else None
    decode = when(decode) if decode >= 0 else None
    out = {}
    first = FIRST_STEP.search(text, bar.end()) if bar else None
    if start is not None:
        out["to_denoise_s"] = round(start, 1)
    if first:
        out["first_step_s"] = round(when(first.start()) - start, 1)
    if start is not None and decode is not None:
        out["denoise_s"] = round(decode - start, 1)
    if decode is not None:
        out["decode_write_s"] = round(wall - decode, 1)
    return out


def timed_reads(cmd: list[str], stdout) -> tuple[int, float, list[tuple[float, str]]]:
    "Run `cmd`: its exit code, wall seconds and its stderr as `(seconds since launch, text)` per read."
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    decode, chunks = codecs.getincrementaldecoder("utf-8")("replace").decode, []
    while chunk := os.read(proc.stderr.fileno(), 1 << 16):
        chunks.append((round(time.perf_counter() - t0, 2), decode(chunk)))
    rc = proc.wait()
    return rc, time.perf_counter() - t0, chunks


def run(name: str, ckpt: Path, work: Path, size: str, frames: int) -> dict:
    """One `longcat-nb sample` process of variant `name`: wall seconds, its stages, exit code, the mp4's size (or the
    stderr tail)."""
    argv, keys = VARIANTS[name]
    config = work / f"{name}.json"
    config.write_text(json.dumps({"pretrained_model_name_or_path": str(ckpt), "output_dir": str(work / "out"),
                                  **keys}))
    video = work / f"{name}.mp4"
    cmd = [sys.executable, "-c", "import sys; from longcat_nb.cli import main; sys.exit(main(sys.argv[1:]))",
           "sample", "--config", str(config), "--prompt",
           "a red fox runs through fresh snow in a pine forest, morning light", "--size", size, "--frames",
           str(frames), "--output", str(video), *argv]
    with open(work / f"{name}.stdout", "w") as stdout:
        rc, wall, chunks = timed_reads(cmd, stdout)
    row = dict(variant=name, args=argv, config_keys=keys, wall_s=round(wall, 1), rc=rc, **stages(chunks, wall))
    if rc or not video.is_file():
        row["stderr_tail"] = "".join(t for _, t in chunks)[-1500:]
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
    try:
        rows = [run(n, a.ckpt.resolve(), work, a.size, a.frames) for n in names]
    finally:
        shutil.rmtree(work)
    return emit({**provenance(), "size": a.size, "frames": a.frames, "rows": rows}, a.json)


if __name__ == "__main__":
    main()
