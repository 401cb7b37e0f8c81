"The workbench views driven without a browser (set values, click buttons) on the tiny checkpoint: training, sampling, crashes."
import json, shutil, time
from pathlib import Path

import av
import pytest
from safetensors.torch import load_file

from longcat_nb.cli import main
from longcat_nb.tiny import make_example_dataset, tiny_checkpoint
from longcat_nb.widgets import ConfigForm, SampleView, TrainView, Workbench, lora_choices

STEPS = 12


def _dataset(root, **kw):
    return make_example_dataset(root, n_clips=1, checkpoint=tiny_checkpoint(), max_train_steps=STEPS, validation_steps=0,
                                checkpointing_steps=4, **kw)


def _wait_for_start(output_dir, timeout=300):
    "Wait for the run's `start` event: from then on a stop request lands before the first few steps end."
    from longcat_nb.training import read_progress
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(e["event"] == "start" for e in read_progress(output_dir)): return
        time.sleep(0.05)
    raise TimeoutError("the run did not start within the timeout")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run twice: through the views and through the CLI. The workbench starts it; a new view on the same
    config (as after a disconnect or a kernel restart) finds the running process, stops it after the first step and
    resumes it with one click."""
    root = tmp_path_factory.mktemp("widgets")
    cfg = _dataset(root / "data")
    wb = Workbench(cfg)
    wb.train.poll_seconds = 0.1
    wb.train.start_button.click()
    _wait_for_start(root / "data" / "output")
    view = TrainView(cfg, poll_seconds=0.1)
    assert view.running() and view.proc is None       # attached through output_dir/train.pid
    view.stop_button.click()
    stopped = view.wait(300)
    assert not wb.train.running()
    states = {"stopped": stopped, "stopped_status": view.status.value}
    view.resume_button.click()
    states["done"] = view.wait(300)
    states["done_status"], states["stats"], states["video"] = view.status.value, view.stats.value, view.video.value
    states["plot"] = len(view.plot.value)
    assert main(["train", "--config", str(cfg), "--output-dir", str(root / "cli")]) == 0
    return root, cfg, states


def test_stop_resume_matches_cli(runs):
    root, cfg, st = runs
    out, cli = root / "data" / "output", root / "cli"
    assert st["stopped"]["state"] == "stopped" and 1 <= st["stopped"]["step"] < STEPS, st["stopped"]
    assert "Resume continues from it" in st["stopped_status"]
    assert st["done"]["state"] == "done" and st["done"]["steps"] == list(range(1, STEPS + 1))
    events = [json.loads(l) for l in (out / "progress.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("start") == 2 and any(e["event"] == "stopped" for e in events)
    cli_losses = [e["loss"] for e in map(json.loads, (cli / "progress.jsonl").read_text().splitlines()) if e["event"] == "step"]
    assert st["done"]["losses"] == pytest.approx(cli_losses, rel=1e-5, abs=1e-7)
    for name in (f"checkpoint-{STEPS}/lora.safetensors", "lora_peft.safetensors"):
        a, b = load_file(out / name), load_file(cli / name)
        assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-6 for k in a), name
    assert "done — LoRA files: lora_peft.safetensors" in st["done_status"]
    assert f"step {STEPS}/{STEPS}" in st["stats"] and "s/step" in st["stats"]
    assert "<video" in st["video"] and st["plot"] > 1000


def test_a_new_view_shows_the_finished_run(runs):
    root, cfg, _ = runs
    view = TrainView(cfg)                          # e.g. after a kernel restart
    assert not view.running() and f"step {STEPS}/{STEPS}" in view.stats.value and "done" in view.status.value


def test_sampling_view_writes_and_shows_video(runs, tmp_path):
    import numpy as np
    from PIL import Image
    root, cfg, _ = runs
    view = SampleView(cfg)
    labels = [l for l, _ in view.lora.options]
    assert "lora_peft.safetensors" in labels and f"checkpoint-{STEPS}/lora.safetensors" in labels
    view.prompt.value = "a red ball"
    view.size.value, view.frames.value, view.steps.value = "64x48", "5", "2"
    view.lora.value = dict(view.lora.options)["lora_kohya.safetensors"]
    view.strength.value = 0.5
    view.button.click()
    assert view.path is not None and view.path.parent == root / "data" / "output" / "samples", view.status.value
    assert "loaded the pipeline" in view.status.value
    with av.open(str(view.path)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (64, 48)
    assert "<video" in view.result.value
    img = tmp_path / "start.png"
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(img)
    view.image.value, view.distilled.value, view.lora.value = str(img), True, ""
    first = view.path
    view.button.click()
    assert view.path != first and view.path.stat().st_size > 0, view.status.value
    assert "reused the loaded pipeline" in view.status.value and view.sampler.loads == 1   # LoRAs changed, not the pipeline
    view.size.value = "65x48"
    view.button.click()
    assert "not divisible by 16" in view.status.value and view.result.value == ""
    view.size.value, view.frames.value = "64x48", "five"
    view.button.click()
    assert "frames = &#x27;five&#x27;: expected a whole number" in view.status.value


def test_training_crash_shows_its_message(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(), ckpt)
    cfg = _dataset(tmp_path / "data", pretrained_model_name_or_path=str(ckpt))
    from longcat_nb.caching import build_cache
    from longcat_nb.config import load_config
    build_cache(load_config(cfg), progress=False)
    shutil.rmtree(ckpt / "dit")                    # the trainer fails while loading, after it started
    view = TrainView(cfg, poll_seconds=0.1)
    view.start()
    st = view.wait(300)
    assert st["state"] == "error" and "training failed" in view.status.value and "lacks dit/" in view.status.value, view.status.value
    # refused before any event (block swap needs CUDA; a fresh output_dir, so the used one is not what stops it): the log tells
    bad = json.loads(cfg.read_text()) | {"musubi_blocks_to_swap": 4, "output_dir": str(tmp_path / "out2")}
    cfg.write_text(json.dumps(bad))
    view.start()
    view.wait(300)
    assert "exit code 2" in view.status.value and "musubi_blocks_to_swap" in view.status.value, view.status.value


def test_form_errors_stop_every_view(tmp_path):
    cfg = _dataset(tmp_path / "data")
    wb = Workbench(cfg)
    wb.form.inputs["learning_rate"].value = "-1"
    assert "must be ≥ 0" in wb.form.notes["learning_rate"].value
    wb.train.start_button.click()
    assert "config form has errors" in wb.train.status.value and wb.train.proc is None
    wb.sample.prompt.value = "x"
    wb.sample.button.click()
    assert "config form has errors" in wb.sample.status.value
    wb.cache.button.click()
    assert "config form has errors" in wb.cache.status.value
    assert lora_choices(tmp_path / "nothing") == [("none", "")]
    assert isinstance(wb.form, ConfigForm)


def test_a_second_start_offers_resume_new_folder_or_overwrite(runs):
    "Start on the finished run's folder: the tab says what the folder holds and offers the three ways on."
    root, cfg, _ = runs
    view = TrainView(cfg, poll_seconds=0.1)
    view.steps.value = "2"
    view.start_button.click()
    assert view.proc is None and view.choices.layout.display == "flex", view.status.value
    assert f"already holds a run (finished at step {STEPS})" in view.status.value and "output-2" in view.status.value
    new = view.choices.children[1]
    new.click()                                   # a new folder beside it, the config left as it is
    assert view.proc is not None and view.output_dir == (root / "data" / "output-2").resolve(), view.status.value
    assert view.proc.args[-4:] == ["--max-train-steps", "2", "--output-dir", str(view.output_dir)], view.proc.args
    view.proc.kill(); view.proc.wait()            # what the run does there is the trainer's, tested elsewhere
    view.steps.value = "abc"
    view.start_button.click()
    assert "steps = &#x27;abc&#x27;: expected a whole number" in view.status.value and view.choices.layout.display == "none"
