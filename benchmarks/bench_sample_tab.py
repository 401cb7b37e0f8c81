"""The Sample tab's second click: open the workbench's Sample view on a checkpoint, generate twice with the same
settings, print the wall time of each click as JSON. The first click loads the pipeline; the second reuses it
(`service.Sampler`), so the difference is the load.

    python benchmarks/bench_sample_tab.py /path/to/LongCat-Video            # full size: 832x480, 93 frames, distilled 16 steps
    python benchmarks/bench_sample_tab.py "$(python -c 'from longcat_nb.tiny import tiny_checkpoint; print(tiny_checkpoint())')" \\
        --size 64x48 --frames 5 --steps 2                                    # the tiny checkpoint, on a CPU
"""
import argparse, json, sys, tempfile, time
from pathlib import Path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint folder in the released layout (dit/, vae/, text_encoder/, ...)")
    p.add_argument("--size", default="832x480")
    p.add_argument("--frames", default="93")
    p.add_argument("--steps", default="16")
    p.add_argument("--distilled", action="store_true", help="the 16-step preview with lora/cfg_step_lora.safetensors")
    p.add_argument("--precision", default="bf16", help="base_model_precision of the config")
    p.add_argument("--prompt", default="a red fox runs through fresh snow in a pine forest, morning light")
    p.add_argument("--with-random-distilled-lora", action="store_true",
                   help="write a random full-width rank-128 lora/cfg_step_lora.safetensors (the release's rank and "
                        "targets) into the checkpoint when it has none: the full-size random checkpoint of "
                        "fullscale_e2e.py comes without one")
    p.add_argument("--json", type=Path, help="also write the result here, with date, commit, GPU and torch")
    a = p.parse_args(argv)
    from longcat_nb.widgets import SampleView
    if a.with_random_distilled_lora:
        write_random_distilled_lora(Path(a.checkpoint))
    work = Path(tempfile.mkdtemp(prefix="bench_sample_tab_"))
    config = work / "config.json"
    config.write_text(json.dumps({"pretrained_model_name_or_path": str(Path(a.checkpoint).resolve()),
                                  "output_dir": str(work / "output"), "base_model_precision": a.precision}))
    view = SampleView(config)
    view.prompt.value, view.size.value, view.frames.value, view.steps.value = a.prompt, a.size, a.frames, a.steps
    view.distilled.value = a.distilled
    clicks = []
    for _ in range(2):
        t0 = time.perf_counter()
        path = view.generate()
        if path is None: raise SystemExit(f"generate failed: {view.status.value}")
        clicks.append(round(time.perf_counter() - t0, 2))
    sys.path.insert(0, str(Path(__file__).parent))
    from provenance import emit, provenance   # benchmarks/provenance.py: date, commit, GPU, torch, command
    return emit({**provenance(), "checkpoint": str(a.checkpoint), "size": a.size, "frames": int(a.frames),
                 "steps": int(a.steps), "distilled": a.distilled, "precision": a.precision, "first_click_s": clicks[0],
                 "second_click_s": clicks[1], "pipeline_loads": view.sampler.loads}, a.json)


def write_random_distilled_lora(ckpt: Path) -> None:
    "A random official-format `cfg_step_lora` for the checkpoint's transformer (rank 128, its targets), if none is there."
    path = ckpt / "lora" / "cfg_step_lora.safetensors"
    if path.exists():
        return
    import torch
    from longcat_nb.lora import LORA_TARGETS, write_official_lora
    from longcat_nb.model import LongCatVideoTransformer3DModel
    with torch.device("meta"):                                       # only the layer shapes are read
        model = LongCatVideoTransformer3DModel.from_config(LongCatVideoTransformer3DModel.load_config(ckpt / "dit"))
    write_official_lora(path, model, rank=128, targets=LORA_TARGETS)


if __name__ == "__main__":
    main()
