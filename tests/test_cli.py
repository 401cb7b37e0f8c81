"End-to-end: the README's demo job, the papermill notebook, and the CLI's exit codes."
import json
from pathlib import Path

import av
import pytest

from longcat_nb.cli import main, run_demo
from longcat_nb.tiny import make_example_dataset, tiny_checkpoint

ROOT = Path(__file__).parents[1]


def test_demo_trains_and_writes_everything(tmp_path, capsys):
    s = run_demo(tmp_path / "demo", steps=120)
    out, err = capsys.readouterr()
    assert "validation video(s) of 9 frames" in err                 # validation rendering says so
    assert out.count("cache OK") == 1, out                          # the cache summary prints once
    assert s["steps"] == 120
    assert s["mean_loss_last_10_steps"] < 0.8 * s["mean_loss_first_10_steps"], s   # the tiny model learns its clips
    assert {Path(p).name for p in s["loras"]} == {f"lora_{f}.safetensors" for f in ("peft", "kohya", "official", "wan")}
    assert all(Path(p).stat().st_size > 0 for p in s["loras"])
    assert s["videos"], "no validation video written"
    with av.open(s["videos"][-1]) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 9 and (frames[0].width, frames[0].height) == (64, 64)
    assert json.loads((tmp_path / "demo" / "demo_summary.json").read_text())["steps"] == 120


def test_check_exit_codes(tmp_path, capsys, monkeypatch):
    cfg = make_example_dataset(tmp_path / "data", checkpoint=tiny_checkpoint(), max_train_steps=2)
    assert main(["check", "--config", str(cfg)]) == 0
    assert "example-t2v" in capsys.readouterr().out
    # the guide's T2V example points at /data/... folders that do not exist here: data errors → exit 1
    monkeypatch.chdir(ROOT)
    assert main(["check", "--config", "examples/config_t2v.json"]) == 1
    assert "missing" in capsys.readouterr().out.lower()
    bad = tmp_path / "bad.json"
    bad.write_text('{"validation_num_video_frames": 90}')
    assert main(["check", "--config", str(bad)]) == 2
    assert "use 89 or 93" in capsys.readouterr().err


def test_sample_t2v_with_lora_and_i2v(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    s = run_demo(tmp_path / "demo", steps=4)
    cfg = str(tmp_path / "demo" / "data" / "config.json")
    out = tmp_path / "t2v.mp4"
    assert main(["sample", "--config", cfg, "--prompt", "a red ball", "--lora", f"{s['loras'][1]}:0.5",
                 "--size", "64x48", "--frames", "5", "--steps", "2", "--output", str(out)]) == 0
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (64, 48)
    assert "decoding 5 frames of 64x48 with the VAE" in capsys.readouterr().err      # no silent decode
    img = tmp_path / "start.png"
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(img)
    out = tmp_path / "i2v.mp4"
    assert main(["sample", "--config", cfg, "--prompt", "a red ball", "--image", str(img), "--distilled",
                 "--size", "64x48", "--frames", "5", "--output", str(out)]) == 0
    assert out.stat().st_size > 0


def test_sample_follows_the_config_and_the_loras_attention(tmp_path, capsys, monkeypatch):
    """`sample` runs the config's attention_implementation / bsa_* keys (block-sparse on a padded 2×6×8 token grid); a
    LoRA trained block-sparse brings its sparsity where the config says "auto", and where the config asks otherwise
    the config wins with one warning naming the file and both settings."""
    from longcat_nb import model as model_module
    from longcat_nb.lora import add_lora, save_lora
    from longcat_nb.model import TINY_DIT_CONFIG, LongCatVideoTransformer3DModel
    monkeypatch.setattr(model_module, "_announced", set())                 # each attention choice is said once a process
    cfg = Path(make_example_dataset(tmp_path / "data", checkpoint=tiny_checkpoint(), max_train_steps=2))
    base = json.loads(cfg.read_text())
    def sample(name, *extra, **keys):
        path = cfg.parent / f"{name}.json"                                  # beside config.json: its relative paths hold
        path.write_text(json.dumps(base | keys))
        assert main(["sample", "--config", str(path), "--prompt", "a red ball", "--size", "128x96", "--frames", "5",
                     "--steps", "1", "--output", str(tmp_path / f"{name}.mp4"), *extra]) == 0
        return capsys.readouterr().out
    assert "attention: block-sparse for token grid 2×6×8 (sparsity 0.5," in sample("bsa", attention_implementation="bsa",
                                                                                 bsa_sparsity=0.5)
    donor = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG)
    add_lora(donor, 4)
    meta = {"attention_implementation": "bsa", "bsa_sparsity": "0.25", "bsa_cdf_threshold": "null"}
    lora = save_lora(donor, tmp_path / "sparse.safetensors", metadata=meta)
    assert "attention: block-sparse for token grid 2×6×8 (sparsity 0.25," in sample("auto", "--lora", str(lora))
    with pytest.warns(UserWarning) as caught:
        sample("sdpa", "--lora", str(lora), attention_implementation="sdpa")
    said = [str(w.message) for w in caught if "trained with" in str(w.message)]
    assert said == [f"{lora}: trained with attention 'bsa' (sparsity 0.25, cdf_threshold None); sampling with attention "
                    "'sdpa' as asked"], said


def test_cache_and_train_subcommands(tmp_path, capsys):
    cfg = make_example_dataset(tmp_path / "data", checkpoint=tiny_checkpoint(), max_train_steps=2, validation_steps=2,
                               output_dir=tmp_path / "out")
    assert main(["cache", "--config", str(cfg)]) == 0
    assert "21 encoded" in capsys.readouterr().out
    assert main(["train", "--config", str(cfg), "--max-train-steps", "3", "--output-dir", str(tmp_path / "out3")]) == 0
    assert (tmp_path / "out3" / "lora_peft.safetensors").is_file() and (tmp_path / "out3" / "checkpoint-3").is_dir()
    assert main(["train", "--config", str(cfg), "--max-train-steps", "4", "--output-dir", str(tmp_path / "out3"),
                 "--resume-from-checkpoint", "latest"]) == 0
    assert (tmp_path / "out3" / "checkpoint-4").is_dir()


def test_train_ctrl_c_stops_with_a_checkpoint(example, tmp_path):
    "SIGINT to `longcat-nb train` once the first step is logged: exit 130, a checkpoint to resume, no traceback."
    import signal, subprocess, sys, time
    from longcat_nb.training import read_progress
    d = json.loads(Path(example).read_text())
    d.update(output_dir=str(tmp_path / "out"), max_train_steps=500, checkpointing_steps=1000, validation_prompt=None, report_to="none")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(d))
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from longcat_nb.cli import main; sys.exit(main())",
                             "train", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not any(e["event"] == "step" for e in read_progress(tmp_path / "out")):
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "resume-from-checkpoint latest" in out
    stopped = read_progress(tmp_path / "out")[-1]
    assert stopped["event"] == "stopped" and (tmp_path / "out" / f"checkpoint-{stopped['step']}").is_dir()


@pytest.mark.parametrize("extra, says", [
    (["--image", "missing.png"], "--image missing.png: not a readable image"),
    (["--lora", "nowhere.safetensors:0.5"], "--lora nowhere.safetensors:0.5: nowhere.safetensors is not a file"),
    (["--frames", "90"], "use 89 or 93"),
    (["--frames", "0"], "--frames 0: must be at least 1"),
    (["--size", "830x480"], "width 830 is not divisible by 16"),
    (["--output", "."], "is a folder"),
    (["--output", "video.gif"], "unknown video extension '.gif'"),
])
def test_sample_argument_errors_exit_2_before_loading(tmp_path, capsys, monkeypatch, extra, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("{}")          # no checkpoint at all: a load would fail differently
    (tmp_path / "missing.png").write_text("not an image")
    assert main(["sample", "--config", "config.json", "--prompt", "x", *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_sample_argument_error_is_fast_in_a_fresh_process(tmp_path):
    import subprocess, sys, time
    (tmp_path / "config.json").write_text("{}")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", "import sys; from longcat_nb.cli import main; sys.exit(main())", "sample",
                        "--config", str(tmp_path / "config.json"), "--prompt", "x", "--frames", "90"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and time.time() - t0 < 10, (r.stderr, time.time() - t0)


def test_cache_and_train_on_bad_data_exit_1_without_traceback_or_output_folder(tmp_path, capsys):
    cfg = make_example_dataset(tmp_path / "data", checkpoint=tiny_checkpoint(), max_train_steps=1, output_dir=tmp_path / "out")
    import shutil
    shutil.copy(tmp_path / "data" / "t2v" / "clip_000.mp4", tmp_path / "data" / "t2v" / "clip_000.mov")   # duplicate-stem: an error
    for cmd in (["cache", "--full-check"], ["train"]):
        assert main([cmd[0], "--config", str(cfg), *cmd[1:]]) == 1
        err = capsys.readouterr().err
        assert "the data check found errors" in err and "clip_000" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


# --- continuation, long videos and refinement from the command line (issue 16) ------------------------------------
def _video_info(path):
    with av.open(str(path)) as c:
        rate, frames = float(c.streams.video[0].average_rate), list(c.decode(video=0))
    return len(frames), frames[0].width, frames[0].height, rate


@pytest.fixture
def small_clip(tmp_path):
    "A 5-frame 64×48 clip at 15 fps (the input to continue or refine)."
    import numpy as np
    from longcat_nb.data import write_video
    return write_video(tmp_path / "in.mp4", np.random.default_rng(0).integers(0, 256, (5, 48, 64, 3), dtype=np.uint8), fps=15)


SMALL = ["--size", "64x48", "--frames", "5", "--cond-frames", "1", "--steps", "2"]   # the smallest: 2 latent frames, 1 kept


def _tiny_config(tmp_path, checkpoint=None):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"pretrained_model_name_or_path": str(checkpoint or tiny_checkpoint())}))
    return str(cfg)


def test_sample_continues_a_video_over_segments_and_refines(tmp_path, small_clip, capsys):
    """`--video --segments 2 --refine --distilled`: the 5-frame clip + 2 continuations of 5 − 1 = 4 new frames = 13
    frames, refined to 2 × 13 frames at 128×64 (1.5×, multiples of 64) and 30 fps."""
    out = tmp_path / "long_hd.mp4"
    assert main(["sample", "--config", _tiny_config(tmp_path), "--prompt", "a red ball", *SMALL, "--video", str(small_clip),
                 "--segments", "2", "--distilled", "--refine", "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))                     # the path is printed
    assert _video_info(out) == (26, 128, 64, 30.0)


def test_sample_long_video_for_seconds_with_a_prompt_per_segment(tmp_path):
    "`--seconds 0.8` at 15 fps needs 12 frames: 5 + 2·4 = 13 takes 3 segments, one prompt each; 15 fps output."
    out = tmp_path / "long.mp4"
    assert main(["sample", "--config", _tiny_config(tmp_path), *SMALL, "--guidance", "1", "--seconds", "0.8",
                 "--prompt", "a red ball", "--prompt", "the ball rolls", "--prompt", "it stops", "--output", str(out)]) == 0
    assert _video_info(out) == (13, 64, 48, 15.0)


def test_sample_refines_a_given_video(tmp_path, small_clip):
    "`--video in.mp4 --refine` alone refines that video: 5 frames → 10 at 30 fps, 128×64."
    out = tmp_path / "hd.mp4"
    assert main(["sample", "--config", _tiny_config(tmp_path), "--prompt", "a red ball", "--size", "64x48",
                 "--video", str(small_clip), "--refine", "--output", str(out)]) == 0
    assert _video_info(out) == (10, 128, 64, 30.0)


@pytest.mark.parametrize("extra, says", [
    (["--video", "nope.mp4"], "--video nope.mp4: no such file"),
    (["--video", "{clip}", "--cond-frames", "13"], "5 frames at 15 fps, 13 needed"),
    (["--video", "{junk}"], "junk.mp4: not a readable video"),
    (["--segments", "0"], "--segments 0: must be at least 1"),
    (["--seconds", "0"], "--seconds 0: must be a number more than 0"),
    (["--segments", "2", "--seconds", "3"], "both set the length"),
    (["--segments", "2", "--prompt", "y", "--prompt", "z"], "--prompt given 3 times for 2 segment(s)"),
    (["--segments", "2", "--cond-frames", "6"], "use 5 or 9"),
    (["--segments", "2", "--frames", "13", "--cond-frames", "13"], "--cond-frames 13: continuing keeps 13 frames"),
    (["--video", "{clip}", "--image", "{png}"], "--image starts a new video, --video continues one"),
    (["--refine"], "--refine: {ckpt}/lora/refinement_lora.safetensors not found"),
])
def test_long_video_argument_errors_exit_2_before_any_load(tmp_path, small_clip, extra, says, capsys, monkeypatch):
    """Each mistake: exit 2, one line, no traceback — before any model loads (loading fails the test; a fresh process
    exits as fast: `test_sample_argument_error_is_fast_in_a_fresh_process`)."""
    import os
    import numpy as np
    from PIL import Image
    from longcat_nb.sampling import LongCatVideoPipeline
    png = tmp_path / "start.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(png)
    ckpt = tmp_path / "ckpt"                     # the tiny checkpoint's folders, but no lora/refinement_lora.safetensors
    ckpt.mkdir()
    for part in ("dit", "vae", "text_encoder", "tokenizer", "scheduler"): os.symlink(tiny_checkpoint() / part, ckpt / part)
    (tmp_path / "junk.mp4").write_text("not a video")
    fill = dict(clip=str(small_clip), png=str(png), ckpt=str(ckpt), junk=str(tmp_path / "junk.mp4"))
    def no_load(*a, **k): raise AssertionError("the pipeline loaded before the argument error")
    monkeypatch.setattr(LongCatVideoPipeline, "from_pretrained", no_load)
    monkeypatch.chdir(tmp_path)
    rc = main(["sample", "--config", _tiny_config(tmp_path, ckpt), "--prompt", "x", *[a.format(**fill) for a in extra]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and says.format(**fill) in err and "Traceback" not in err and len(err.splitlines()) == 1, err
