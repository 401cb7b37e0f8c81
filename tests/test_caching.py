"The long tail of the cache: I2V without conditioning data, failures, shape batching, conflicts, encoder switches."
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from longcat_nb import caching
from longcat_nb.caching import CacheError, CachedDataset, build_cache, encode_frames, load_vae
from longcat_nb.config import parse_config, parse_datasets
from longcat_nb.data import write_video
from longcat_nb.tiny import example_clip, tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(): return tiny_checkpoint()


def _clips(folder: Path, specs, captions=None, starts: Path | None = None):
    "Write clips `name: (W, H, frames)` with captions (and start frames) into `folder`."
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, (w, h, n)) in enumerate(specs.items()):
        rgb, caption = example_clip(i, n, w, h)
        write_video(folder / f"{name}.mp4", rgb, fps=15)
        (folder / f"{name}.txt").write_text((captions or {}).get(name, caption))
        if starts is not None:
            starts.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb[0]).save(starts / f"{name}.png")


def _cfg(tmp_path, ckpt, datasets, **over):
    "A config over `datasets` (entries without the common keys), caching under tmp_path/cache."
    common = {"type": "local", "resolution": 64, "resolution_type": "pixel", "video": {"num_frames": 9}}
    ds = parse_datasets([{**common, **d} for d in datasets], str(tmp_path / "multidatabackend.json"), tmp_path)
    return parse_config({"pretrained_model_name_or_path": str(ckpt), "cache_dir": str(tmp_path / "cache"),
                         "vae_batch_size": 4, **over}, base_dir=tmp_path, datasets=ds)


def test_i2v_without_conditioning_data(tmp_path, ckpt):
    "The clip's own first frame is the start frame; its latent sits beside the clip's as <name>.<ext>.start.safetensors."
    _clips(tmp_path / "clips", {"a": (64, 64, 9)}, captions={"a": "一只猫在花园里走 &amp; a cat"})
    cfg = _cfg(tmp_path, ckpt, [{"id": "self", "instance_data_dir": str(tmp_path / "clips"), "is_i2v": True}])
    s = build_cache(cfg, progress=False)
    assert (s.encoded, s.failed) == (2 + 2, 0)  # clip + start; caption + ""
    assert (tmp_path / "cache/vae/self/a.mp4.start.safetensors").is_file()
    item = CachedDataset(cfg)[0]
    assert item["num_cond_latents"] == 1 and item["caption"] == "一只猫在花园里走 &amp; a cat"
    # causal VAE: the first frame encoded alone is the clip's latent frame 0 (up to float error)
    vae = load_vae(ckpt)
    frames, _ = caching.load_sample_frames(CachedDataset(cfg).samples[0])
    torch.testing.assert_close(item["cond_latents"][:, 0], encode_frames(vae, frames[None])[0, :, 0], atol=1e-4, rtol=1e-4)
    # the non-ASCII caption survives the metadata round trip, cleaned
    emb, mask = CachedDataset(cfg).text("一只猫在花园里走 &amp; a cat")
    assert emb.shape == (512, 32) and mask.sum() > 1


def test_failed_sample_is_reported_and_others_cached(tmp_path, ckpt, monkeypatch):
    _clips(tmp_path / "clips", {"good": (64, 64, 9), "bad": (64, 64, 9)})
    cfg = _cfg(tmp_path, ckpt, [{"id": "d", "instance_data_dir": str(tmp_path / "clips")}])
    real = caching.load_sample_frames
    def flaky(sample):
        if sample.path.stem == "bad": raise ValueError(f"{sample.path}: cannot decode")
        return real(sample)
    monkeypatch.setattr(caching, "load_sample_frames", flaky)
    s = build_cache(cfg, progress=False)
    assert (s.failed, s.by_kind["latents"]["encoded"], s.ok) == (1, 1, False)
    assert "bad.mp4: cannot decode" in str(s) and "INCOMPLETE" in str(s)
    with pytest.raises(CacheError, match="bad.mp4.safetensors: missing"): CachedDataset(cfg)
    monkeypatch.setattr(caching, "load_sample_frames", real)
    s = build_cache(cfg, progress=False)
    assert (s.encoded, s.failed) == (1, 0)


def test_batches_only_same_shapes_and_tiling(tmp_path, ckpt, monkeypatch):
    "vae_batch_size 4 over two buckets: every VAE call sees one shape; tiling/slicing switches reach the VAE."
    _clips(tmp_path / "clips", {"w1": (128, 64, 9), "s1": (64, 64, 9), "w2": (128, 64, 9), "s2": (64, 64, 9), "s3": (64, 64, 9)})
    cfg = _cfg(tmp_path, ckpt, [{"id": "d", "instance_data_dir": str(tmp_path / "clips")}],
               vae_enable_tiling=True, vae_enable_slicing=True)
    shapes, flags = [], {}
    real_encode, real_load = caching.encode_frames, caching.load_vae
    def spy_encode(vae, x):
        shapes.append(tuple(x.shape)); flags.update(tiling=vae.use_tiling, slicing=vae.use_slicing)
        return real_encode(vae, x)
    monkeypatch.setattr(caching, "encode_frames", spy_encode)
    s = build_cache(cfg, progress=False)
    assert s.by_kind["latents"]["encoded"] == 5
    assert sorted(shapes) == [(2, 3, 9, 64, 128), (3, 3, 9, 64, 64)]
    assert flags == {"tiling": True, "slicing": True}


def test_shared_start_frame_in_two_buckets_is_a_clear_error(tmp_path, ckpt):
    _clips(tmp_path / "a", {"x": (128, 128, 9)}, starts=tmp_path / "starts")
    _clips(tmp_path / "b", {"x": (128, 128, 9)})
    cfg = _cfg(tmp_path, ckpt, [
        {"id": "a", "instance_data_dir": str(tmp_path / "a"), "is_i2v": True, "conditioning_data": ["starts"]},
        {"id": "b", "instance_data_dir": str(tmp_path / "b"), "is_i2v": True, "conditioning_data": ["starts"],
         "resolution": 128},
        {"id": "starts", "instance_data_dir": str(tmp_path / "starts"), "dataset_type": "conditioning",
         "caption_strategy": None}])
    report = caching.check_datasets(cfg)
    assert report.ok, str(report)
    with pytest.raises(CacheError, match="different buckets"): build_cache(cfg, progress=False)


def test_validation_prompts_cached(tmp_path, ckpt):
    _clips(tmp_path / "clips", {"a": (64, 64, 9)})
    cfg = _cfg(tmp_path, ckpt, [{"id": "d", "instance_data_dir": str(tmp_path / "clips")}],
               validation_prompt=["a  red ball", "a blue cube"], validation_negative_prompt="blurry")
    build_cache(cfg, progress=False)
    emb, mask = caching.load_prompts(cfg, ["a red ball", "a blue cube", "blurry", ""])
    assert emb.shape == (4, 512, 32) and mask[3].sum() == 1


def test_bench_vae_runs_tiny_on_cpu(tmp_path):
    import subprocess, sys
    out = tmp_path / "vae.json"
    subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "bench_vae.py"), "--tiny",
                    "--repeats", "1", "--json", str(out)], check=True, capture_output=True)
    r = json.loads(out.read_text())
    assert r["defaults_match_wan21"] is True
    for k in ("encode_plain", "encode_tiled", "decode_plain", "decode_tiled"):
        assert r[k]["finite"] and r[k]["median_s"] > 0, r[k]
    assert r["encode_plain"]["out_shape"] == [1, 16, 3, 8, 8]


def test_dtype_is_part_of_both_cache_keys(tmp_path, ckpt):
    "A cache built in fp32 is not reused by a bf16 run (and the other way round): each dtype has its own entries."
    _clips(tmp_path / "clips", {"a": (64, 64, 9)})
    cfg = _cfg(tmp_path, ckpt, [{"id": "d", "instance_data_dir": str(tmp_path / "clips")}])
    build_cache(cfg, progress=False)                                   # the CPU: fp32
    samples = caching.training_samples(cfg)
    fp32 = caching.latent_entries(cfg, samples, ckpt, torch.float32)[0]
    bf16 = caching.latent_entries(cfg, samples, ckpt, torch.bfloat16)[0]
    caching.check_entry(fp32.path, fp32.expected)
    with pytest.raises(CacheError, match="stale \\(vae_dtype 'torch.float32' → 'torch.bfloat16'\\)"):
        caching.check_entry(bf16.path, bf16.expected)
    m32, m16 = caching.text_meta(ckpt, torch.float32), caching.text_meta(ckpt, torch.bfloat16)
    assert caching.text_path(cfg, "", m32) != caching.text_path(cfg, "", m16)
    assert caching.text_path(cfg, "", m32).is_file() and not caching.text_path(cfg, "", m16).exists()


def test_eval_split_is_not_vae_encoded(tmp_path, ckpt):
    "The held-out validation split's clips are not encoded; their captions are (validation prompts come from them)."
    _clips(tmp_path / "train", {"t": (64, 64, 9)}, captions={"t": "train clip"})
    _clips(tmp_path / "val", {"v": (64, 64, 9)}, captions={"v": "held-out clip"})
    cfg = _cfg(tmp_path, ckpt, [{"id": "train", "instance_data_dir": str(tmp_path / "train")},
                                {"id": "val", "instance_data_dir": str(tmp_path / "val")}],
               eval_dataset_id="val", validation_using_datasets=True)
    s = build_cache(cfg, progress=False)
    assert s.by_kind["latents"]["encoded"] == 1, s
    assert not (tmp_path / "cache/vae/val").exists()
    meta = caching.text_meta(ckpt)
    assert caching.text_path(cfg, "held-out clip", meta).is_file()


def test_start_named_clip_cannot_collide_with_a_start_frame(tmp_path, ckpt):
    "I2V without conditioning data: x.mp4's start frame and a clip named x.start.mp4 get different cache files."
    _clips(tmp_path / "clips", {"x": (64, 64, 9), "x.start": (64, 64, 9)})
    cfg = _cfg(tmp_path, ckpt, [{"id": "d", "instance_data_dir": str(tmp_path / "clips"), "is_i2v": True}])
    entries = caching.latent_entries(cfg, caching.training_samples(cfg), ckpt)
    assert len({e.path for e in entries}) == len(entries) == 4
    s = build_cache(cfg, progress=False)
    assert s.ok and s.by_kind["latents"]["encoded"] == 4
    ds = CachedDataset(cfg)
    assert {ds[i]["id"] for i in range(len(ds))} == {"d/x", "d/x.start"}


def test_flipped_byte_is_repaired_by_cache_and_reported_by_train(tmp_path, ckpt):
    "One flipped byte in a latent: `cache` re-encodes it (no --full-check needed); training stops with the repair command."
    _clips(tmp_path / "clips", {"a": (64, 64, 9)})
    cfg = _cfg(tmp_path, ckpt, [{"id": "d", "instance_data_dir": str(tmp_path / "clips")}])
    build_cache(cfg, progress=False)
    f = next((tmp_path / "cache/vae/d").glob("*.safetensors"))
    data = f.read_bytes(); f.write_bytes(data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:])
    with pytest.raises(CacheError, match=r"damaged \(checksum mismatch\) — repair it with `longcat-nb cache"):
        CachedDataset(cfg)[0]
    s = build_cache(cfg, progress=False)
    assert (s.rebuilt, s.reused) == (1, 2) and "checksum mismatch" in s.problems[0]
    CachedDataset(cfg)[0]
