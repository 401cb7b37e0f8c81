"""The long tail of the data chapter: every container and codec, rotation, variable frame rate, damaged files,
captions, start-frame pairing, every problem rule, the example dataset configs, and the sampler's resume.
The main path is shown and tested in nbs/01_data.ipynb."""
import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from fastcore.test import test_eq as eq_, test_fail as fail_
from PIL import Image

from longcat_nb.config import DatasetConfig, VideoSettings, load_config, load_datasets
from longcat_nb.data import (RULES, Bucket, BucketBatchSampler, check_datasets, data_loader, decode_video,
                             load_sample_frames, probe_media, read_image, write_video)

ROOT = Path(__file__).resolve().parents[1]


def bars(n, width=128, height=64):
    "uint8 [n, H, W, 3]: frame i is black with a white 4-px column at x = 4·i (survives any codec, even GIF's palette)."
    frames = np.zeros((n, height, width, 3), np.uint8)
    for i in range(n): frames[i, :, 4 * i:4 * i + 4] = 255
    return frames


def bar_index(frames):
    "Which `bars` frame each decoded frame [F, H, W, 3] is."
    return [int(np.argmax(f.mean(axis=(0, 2)).reshape(-1, 4).mean(1))) for f in frames]


def dataset(tmp_path, id="clips", folder="clips", **kw):
    video = kw.pop("video", {})
    return DatasetConfig(id=id, instance_data_dir=tmp_path / folder, resolution=64, resolution_type="pixel",
                         video=VideoSettings(**{"num_frames": 9, **video}), **kw)


def clip(folder, name, n=12, width=128, height=64, fps=15, caption="a caption", **kw):
    folder.mkdir(parents=True, exist_ok=True)
    path = write_video(folder / name, bars(n, width, height), fps=fps, **kw)
    if caption is not None: path.with_suffix(".txt").write_text(caption)
    return path


def image(path, width=128, height=64):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(bars(1, width, height)[0]).save(path)
    return path


def rules(report, path=None):
    return sorted(p.rule for p in report.problems if path is None or Path(p.path or "").name == path)


# --- decoding ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif"])
def test_containers_decode_every_other_frame_of_30fps(tmp_path, ext):
    path = write_video(tmp_path / f"c{ext}", bars(20), fps=30)
    frames = decode_video(path, fps=15)
    eq_(frames.shape, (10, 64, 128, 3))
    eq_(bar_index(frames), list(range(0, 20, 2)))
    info = probe_media(path)
    eq_((info.width, info.height, info.frames, info.source_frames), (128, 64, 10, 20))


def test_portrait_and_landscape(tmp_path):
    eq_(decode_video(write_video(tmp_path / "p.mp4", bars(3, 64, 128)), fps=15).shape, (3, 128, 64, 3))
    eq_(decode_video(write_video(tmp_path / "l.mp4", bars(3, 128, 64)), fps=15).shape, (3, 64, 128, 3))


def test_rotated_phone_clip_is_upright_and_bucketed_as_portrait(tmp_path):
    path = clip(tmp_path / "clips", "phone.mp4", rotation=-90)        # stored 128×64, displayed 64×128
    eq_(decode_video(path, fps=15).shape[1:3], (128, 64))
    report = check_datasets([dataset(tmp_path)])
    eq_(report.samples[0].bucket, Bucket(64, 128, 9))
    eq_(load_sample_frames(report.samples[0])[0].shape, (3, 9, 128, 64))


def test_variable_frame_rate_mp4(tmp_path):
    times = [0, 0.02, 0.04, 0.30, 0.32, 0.60]                        # bursts and a stall
    path = write_video(tmp_path / "vfr.mp4", bars(6), times=times)
    # targets 0, .1, .2, ... pick the nearest source frame; the clip lasts until .60 + .28
    eq_(bar_index(decode_video(path, fps=10)), [0, 2, 3, 3, 4, 5, 5, 5, 5])
    eq_(probe_media(path, fps=10).frames, 9)


def test_slow_source_repeats_frames(tmp_path):
    eq_(bar_index(decode_video(write_video(tmp_path / "s.mp4", bars(4), fps=5), fps=15)),
        [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3])   # 0.8 s at 15 fps: nearest, ties to the earlier frame


def test_clips_are_cut_from_the_start(tmp_path):
    path = clip(tmp_path / "clips", "long.mp4", n=25)
    report = check_datasets([dataset(tmp_path)])
    eq_(report.samples[0].frames, 25)
    frames, start = load_sample_frames(report.samples[0])
    eq_(frames.shape, (3, 9, 64, 128))
    eq_(bar_index(((frames.permute(1, 2, 3, 0) + 1) * 127.5).numpy()), list(range(9)))
    assert start is None


def test_read_image_resizes_like_a_frame(tmp_path):
    p = image(tmp_path / "a.png")
    frame = write_video(tmp_path / "a.mp4", bars(1))
    a, b = read_image(p, (64, 64)), decode_video(frame, size=(64, 64))
    eq_(a.shape, (1, 64, 64, 3))
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 6            # same geometry, both codecs aside


# --- the frame rule and buckets -------------------------------------------------------------------------------------

def test_resolution_frames_buckets_and_frame_rule(tmp_path):
    for name, n in [("a.mp4", 12), ("b.mp4", 22), ("c.mp4", 4)]: clip(tmp_path / "clips", name, n=n)
    ds = dataset(tmp_path, video={"num_frames": None, "min_frames": 5, "bucket_strategy": "resolution_frames",
                                  "frame_interval": 8})
    report = check_datasets([ds])
    eq_([str(s.bucket) for s in report.samples], ["128x64@9", "128x64@17"])
    eq_(rules(report), ["too-few-frames"])
    eq_(report.datasets[0].to_dict()["buckets"], {"128x64@17": 1, "128x64@9": 1})


def test_image_dataset_gives_one_frame_samples(tmp_path):
    image(tmp_path / "imgs" / "a.png"); image(tmp_path / "imgs" / "sub" / "b.jpg", 64, 128)
    for p in (tmp_path / "imgs").rglob("*.*"): p.with_suffix(".txt").write_text("an image")
    report = check_datasets([dataset(tmp_path, "imgs", "imgs", dataset_type="image")])
    eq_([(s.id, str(s.bucket), s.media) for s in report.samples],
        [("imgs/a", "128x64@1", "image"), ("imgs/sub/b", "64x128@1", "image")])
    frames, start = load_sample_frames(report.samples[1])
    eq_(frames.shape, (3, 1, 128, 64)); assert start is None


# --- problems -----------------------------------------------------------------------------------------------------

def faststart(path):
    "Remux an mp4 with its index (moov) in front, as web-ready files have it: cutting the end then loses frames only."
    out = path.with_name("fs_" + path.name)
    with av.open(str(path)) as src, av.open(str(out), "w", options={"movflags": "+faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size: packet.stream = stream; dst.mux(packet)
    return out


def test_zero_byte_truncated_and_unreadable_files(tmp_path):
    d = tmp_path / "clips"
    good = clip(d, "good.mp4")
    (d / "empty.mp4").write_bytes(b""); (d / "empty.txt").write_text("x")
    (d / "junk.mp4").write_bytes(b"not a video at all" * 10); (d / "junk.txt").write_text("x")
    for name in ["nomoov.mp4", "cutmkv.mkv", "cutavi.avi", "faststart.mp4"]:
        whole = write_video(tmp_path / name, bars(30), fps=30).read_bytes()
        if name == "faststart.mp4": whole = faststart(tmp_path / name).read_bytes()
        (d / name).write_bytes(whole[: len(whole) * 8 // 10]); (d / name).with_suffix(".txt").write_text("x")
    report = check_datasets([dataset(tmp_path)])
    eq_([s.path for s in report.samples], [good])
    for name, rule in [("empty.mp4", "zero-byte"), ("junk.mp4", "unreadable"), ("nomoov.mp4", "unreadable"),
                       ("cutmkv.mkv", "truncated"), ("cutavi.avi", "truncated"), ("faststart.mp4", "truncated")]:
        eq_(rules(report, name), [rule])
    assert report.ok and report.datasets[0].skipped == {"zero-byte": 1, "unreadable": 2, "truncated": 3}
    nomoov = next(p for p in report.problems if p.path.endswith("nomoov.mp4"))
    assert "cut short" in nomoov.message and "ffmpeg" in nomoov.fix


def test_truncated_and_empty_images(tmp_path):
    d = tmp_path / "imgs"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), np.uint8)).save(tmp_path / "a.jpg")
    d.mkdir(); data = (tmp_path / "a.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 2]); (d / "zero.png").write_bytes(b"")
    image(d / "ok.png")
    for p in d.iterdir(): p.with_suffix(".txt").write_text("x")
    report = check_datasets([dataset(tmp_path, "imgs", "imgs", dataset_type="image")])
    eq_((rules(report, "cut.jpg"), rules(report, "zero.png"), len(report.samples)), (["truncated"], ["zero-byte"], 1))


def test_caption_rules(tmp_path):
    d = tmp_path / "clips"
    clip(d, "ok.mp4", caption="  a   dog\nruns ")
    clip(d, "none.mp4", caption=None)
    clip(d, "blank.mp4", caption=" \n ")
    report = check_datasets([dataset(tmp_path)])
    eq_([s.caption for s in report.samples], ["a dog runs"])
    eq_((rules(report, "none.mp4"), rules(report, "blank.mp4")), (["missing-caption"], ["empty-caption"]))
    assert "none.txt" in next(p for p in report.problems if p.rule == "missing-caption").message
    eq_([s.caption for s in check_datasets([dataset(tmp_path, caption_strategy="filename")]).samples],
        ["blank", "none", "ok"])
    eq_({s.caption for s in check_datasets([dataset(tmp_path, caption_strategy="instanceprompt",
                                                    instance_prompt="sks dog")]).samples}, {"sks dog"})


def test_size_rules(tmp_path):
    d = tmp_path / "clips"
    clip(d, "ok.mp4")
    clip(d, "tiny.mp4", width=64, height=32)                           # 64×32 → 128×64 bucket: 2× upscale
    clip(d, "strip.mp4", width=320, height=64)                         # 5:1
    report = check_datasets([dataset(tmp_path)])
    eq_((rules(report, "tiny.mp4"), rules(report, "strip.mp4")), (["too-small"], ["odd-size"]))
    assert "upscaled 2.00× into bucket 128x64@9" in str(report)


def test_duplicate_stems_stop_training(tmp_path):
    d = tmp_path / "clips"
    clip(d, "a.mp4"); clip(d, "a.webm"); clip(d, "b.mp4")
    report = check_datasets([dataset(tmp_path)])
    assert not report.ok
    eq_([(p.rule, p.level) for p in report.errors], [("duplicate-stem", "error")])
    assert "a.mp4, a.webm" in report.errors[0].message
    eq_([s.id for s in report.samples], ["clips/b"])


def test_dataset_level_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    clip(tmp_path / "short", "a.mp4", n=3)
    report = check_datasets([dataset(tmp_path, "gone", "gone"), dataset(tmp_path, "empty", "empty"),
                             dataset(tmp_path, "short", "short"), dataset(tmp_path, "off", "off", disabled=True),
                             dataset(tmp_path, "i2v", "short", is_i2v=True, conditioning_data=["nope"])])
    eq_([(p.dataset, p.rule) for p in report.errors],
        [("gone", "missing-dir"), ("empty", "empty-dataset"), ("short", "no-usable-samples"),
         ("i2v", "unknown-conditioning"), ("i2v", "no-usable-samples")])
    assert all(p.level == "error" for p in report.errors) and not report.ok
    eq_([d.disabled for d in report.datasets], [False, False, False, True, False])


# --- image-to-video pairing -----------------------------------------------------------------------------------------

def i2v(tmp_path):
    return [dataset(tmp_path, is_i2v=True, conditioning_data=["starts"]),
            dataset(tmp_path, "starts", "starts", dataset_type="conditioning", caption_strategy=None)]


def test_start_frames_pair_by_relative_name(tmp_path):
    clip(tmp_path / "clips", "a.mp4"); clip(tmp_path / "clips" / "sub", "b.mkv"); clip(tmp_path / "clips", "c.mp4")
    clip(tmp_path / "clips", "d.mp4")
    image(tmp_path / "starts" / "a.jpg"); image(tmp_path / "starts" / "sub" / "b.webp")
    image(tmp_path / "starts" / "c_start.png")                       # misnamed
    image(tmp_path / "starts" / "d.png", 64, 64)                      # another shape than its clip
    report = check_datasets(i2v(tmp_path))
    eq_([(s.id, s.cond_path.relative_to(tmp_path).as_posix()) for s in report.samples],
        [("clips/a", "starts/a.jpg"), ("clips/sub/b", "starts/sub/b.webp")])
    eq_((rules(report, "c.mp4"), rules(report, "c_start.png"), rules(report, "d.png")),
        (["missing-start-frame"], ["extra-start-frame"], ["odd-size"]))
    frames, start = load_sample_frames(report.samples[0])
    eq_((frames.shape, start.shape), ((3, 9, 64, 128), (3, 1, 64, 128)))
    assert (start - frames[:, :1]).abs().mean() < 0.05               # the start frame is the clip's frame 0


def test_i2v_without_conditioning_uses_the_first_frame(tmp_path):
    clip(tmp_path / "clips", "a.mp4")
    report = check_datasets([dataset(tmp_path, is_i2v=True)])
    s = report.samples[0]
    assert s.is_i2v and s.cond_path is None
    frames, start = load_sample_frames(s)
    assert torch.equal(start, frames[:, :1])


# --- the report, the examples ---------------------------------------------------------------------------------------

def test_report_renders_and_serialises(tmp_path):
    clip(tmp_path / "clips", "a.mp4"); clip(tmp_path / "clips", "b.mp4", caption=None)
    report = check_datasets([dataset(tmp_path)])
    data = json.loads(report.to_json())
    eq_((data["ok"], len(data["samples"]), data["problems"][0]["rule"], data["problems"][0]["level"]),
        (True, 1, "missing-caption", "warning"))
    eq_(data["datasets"][0]["frames"], {"min": 12, "median": 12.0, "max": 12})
    eq_(data["samples"][0]["bucket"], "128x64@9")
    for text in (str(report), report._repr_markdown_()):
        assert "OK" in text and "missing-caption" in text and "128x64@9" in text
    assert set(RULES.values()) == {"error", "warning", "note"}


def test_problem_lists_are_capped_when_printed(tmp_path):
    for i in range(13): clip(tmp_path / "clips", f"c{i:02d}.mp4", n=2, caption=None)
    text = str(check_datasets([dataset(tmp_path)]))
    assert "… and 3 more" in text and text.count("[missing-caption]") == 11


@pytest.mark.parametrize("kind,ids", [("t2v", ["longcat-video-train"]),
                                      ("i2v", ["longcat-video-train", "longcat-video-cond", "longcat-video-val",
                                               "longcat-video-val-cond"])])
def test_example_dataset_configs_load_and_report_missing_folders(kind, ids, monkeypatch):
    monkeypatch.chdir(ROOT)
    datasets = load_datasets(ROOT / "examples" / f"multidatabackend_{kind}.json")
    eq_([d.id for d in datasets], ids)
    eq_(datasets[0].resolution, 480)
    if kind == "i2v": eq_((datasets[0].is_i2v, datasets[0].conditioning_data), (True, ["longcat-video-cond"]))
    report = check_datasets(load_config(ROOT / "examples" / f"config_{kind}.json"))
    assert not report.ok and {p.rule for p in report.errors} == {"missing-dir"}
    assert "/data/video-clips does not exist" in str(report)


# --- batches ----------------------------------------------------------------------------------------------------------

def test_sampler_is_deterministic_resumable_and_counts_repeats(tmp_path):
    for i, (w, h) in enumerate([(128, 64)] * 5 + [(64, 128)] * 3): clip(tmp_path / "clips", f"c{i}.mp4", n=10, width=w, height=h)
    samples = check_datasets([dataset(tmp_path, repeats=1)]).samples
    sampler = BucketBatchSampler(samples, batch_size=2, seed=7)
    epoch0 = [k.indices for k in sampler]
    eq_(sorted(i for b in epoch0 for i in b), sorted(list(range(8)) * 2))     # 1 + repeats each
    assert all(len({samples[i].bucket for i in b}) == 1 for b in epoch0)
    eq_(sampler.state_dict(), {"epoch": 1, "position": 0})
    epoch1 = [k.indices for k in sampler]
    assert epoch1 != epoch0
    eq_([k.indices for k in BucketBatchSampler(samples, batch_size=2, seed=7)], epoch0)
    resumed = BucketBatchSampler(samples, batch_size=2, seed=7)
    resumed.load_state_dict({"epoch": 1, "position": 3})
    eq_([k.indices for k in resumed], epoch1[3:])
    once = [replace(s, repeats=0) for s in samples]                          # buckets of 5 and 3
    eq_((len(BucketBatchSampler(once, batch_size=2)), len(BucketBatchSampler(once, batch_size=2, drop_last=True))), (5, 3))


def test_data_loader_with_a_worker_and_t2v_batches(tmp_path):
    clip(tmp_path / "clips", "a.mp4"); clip(tmp_path / "clips", "b.mp4")
    samples = check_datasets([dataset(tmp_path)]).samples
    batches = list(data_loader(samples, batch_size=2, num_workers=1))
    eq_(len(batches), 1)
    b = batches[0]
    eq_((b["frames"].shape, b["frames"].dtype, b["start_frames"], b["bucket"], b["position"]),
        ((2, 3, 9, 64, 128), torch.float32, None, Bucket(128, 64, 9), 0))
    eq_(sorted(b["captions"]), ["a caption", "a caption"])


def test_damaged_clip_fails_loudly_when_loaded(tmp_path):
    path = clip(tmp_path / "clips", "a.mp4")
    sample = check_datasets([dataset(tmp_path)]).samples[0]
    path.write_bytes(path.read_bytes()[:200])                        # damaged after the check
    fail_(lambda: load_sample_frames(sample), contains="a.mp4: cannot decode")


# --- edge cases users hit (issue 12) ------------------------------------------------------------------------------

def test_caption_not_in_utf8_is_read_and_noted(tmp_path):
    d = tmp_path / "clips"
    clip(d, "zh.mp4", caption=None)
    (d / "zh.txt").write_bytes("一只猫在花园里慢慢地走，阳光明媚，微风吹过树叶".encode("gb18030"))
    clip(d, "bom.mp4", caption=None)
    (d / "bom.txt").write_bytes("\ufeffa dog".encode("utf-8"))
    report = check_datasets([dataset(tmp_path)])
    eq_({s.id: s.caption for s in report.samples}, {"clips/zh": "一只猫在花园里慢慢地走，阳光明媚，微风吹过树叶", "clips/bom": "a dog"})
    notes = [p for p in report.problems if p.rule == "caption-encoding"]
    eq_((len(notes), notes[0].level, Path(notes[0].path).name), (1, "note", "zh.txt"))
    assert "not UTF-8; read as gb18030" in notes[0].message and "notes (samples kept)" in str(report)


def test_symlinks_outside_aliases_and_dangling(tmp_path):
    "A link to a clip outside the folder is used (and caches); two names for one file are a duplicate; a dangling link is reported."
    outside = clip(tmp_path / "elsewhere", "far.mp4")
    d = tmp_path / "clips"
    clip(d, "a.mp4")
    (d / "far.mp4").symlink_to(outside); (d / "far.txt").write_text("far away")
    (d / "alias.mp4").symlink_to(d / "a.mp4"); (d / "alias.txt").write_text("x")
    (d / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4"); (d / "gone.txt").write_text("x")
    report = check_datasets([dataset(tmp_path)])
    assert report.ok
    eq_(sorted(s.id for s in report.samples), ["clips/a", "clips/far"])
    eq_((rules(report, "alias.mp4"), rules(report, "gone.mp4")), (["duplicate-file"], ["dangling-link"]))
    from longcat_nb.caching import latent_entries
    from longcat_nb.config import parse_config
    from longcat_nb.tiny import tiny_checkpoint
    cfg = parse_config({"cache_dir": str(tmp_path / "cache")}, datasets=[dataset(tmp_path)])
    paths = {e.sample.id: e.path for e in latent_entries(cfg, report.samples, tiny_checkpoint())}
    eq_(paths["clips/far"], tmp_path / "cache/vae/clips/far.mp4.safetensors")   # under the dataset's cache, no crash


def test_one_frame_video_is_too_few_frames_not_truncated(tmp_path):
    clip(tmp_path / "clips", "one.mp4", n=1)
    report = check_datasets([dataset(tmp_path)])
    eq_(rules(report, "one.mp4"), ["too-few-frames"])


def test_image_over_the_decompression_limit(tmp_path, monkeypatch):
    d = tmp_path / "imgs"
    image(d / "big.png", 256, 128); (d / "big.txt").write_text("x")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 256 * 128 // 4)      # Pillow refuses above twice the limit
    report = check_datasets([dataset(tmp_path, "imgs", "imgs", dataset_type="image")])
    eq_(rules(report, "big.png"), ["too-large"])
    p = next(p for p in report.problems if p.rule == "too-large")
    assert p.message.startswith("too large") and "downscale to at most 8,192 px" in p.fix


def test_a_file_with_several_problems_lists_them_all(tmp_path):
    clip(tmp_path / "clips", "bad.mp4", width=64, height=32, caption=None)   # too small AND no caption
    report = check_datasets([dataset(tmp_path)])
    eq_(rules(report, "bad.mp4"), ["missing-caption", "too-small"])


def test_seed_settings_put_a_16_9_clip_in_the_native_832x480_bucket(tmp_path):
    "The seeds' dataset entry (\"resolution\": 480, default resolution_type) trains a 16:9 clip at the model's 832×480."
    entry = {"id": "longcat-video-train", "type": "local", "dataset_type": "video", "instance_data_dir": str(tmp_path / "clips"),
             "caption_strategy": "textfile", "resolution": 480, "video": {"num_frames": 9}}
    (tmp_path / "multidatabackend.json").write_text(json.dumps([entry]))
    clip(tmp_path / "clips", "wide.mp4", n=10, width=1280, height=720)
    report = check_datasets(load_datasets(tmp_path / "multidatabackend.json"))
    eq_(str(report.samples[0].bucket), "832x480@9")
    frames, _ = load_sample_frames(report.samples[0])
    eq_(tuple(frames.shape), (3, 9, 480, 832))                          # what the VAE encodes and training sees
