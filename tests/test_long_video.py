"""Video continuation, long videos and the 720p refinement (issue 16) on the tiny checkpoint, and their schedules
against the release's formulas (written out here from `pipeline_longcat_video.py`, not from our code)."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from longcat_nb.sampling import (LongCatVideoPipeline, flow_timesteps, long_video_frames, refine_layout,
                                 segments_for_seconds)
from longcat_nb.tiny import tiny_checkpoint
from longcat_nb.training import flow_inputs, flow_loss


# --- schedules: the release's formulas, float64 -------------------------------------------------------------------
def shifted(sigmas, s=12.0): return [1000 * s * x / (1 + (s - 1) * x) for x in sigmas]

def base_sigmas(n): return [1 + (0.001 - 1) * k / (n - 1) for k in range(n)]                 # linspace(1, 0.001, n)

def distilled_sigmas(n):                                                                     # get_timesteps_sigmas(use_distill)
    grid = [round(j * (1000 // 50)) / 1000 for j in range(50, 0, -1)]                        # 1.0, 0.98, …, 0.02
    return [grid[math.floor(k * 50 / n)] for k in range(n)]

def release_continuation(n):                                                                 # generate_vc, enhance_hf=True
    return [t for t in shifted(base_sigmas(n)) if t > 500] + [500 - 50 * j for j in range(10)]

def release_refinement(n, t_thresh=0.5):                                                     # generate_refine
    return [1000 * t_thresh] + [t for t in shifted(base_sigmas(n)) if t < 1000 * t_thresh]


@pytest.mark.parametrize("n", [50, 40, 30])
def test_continuation_schedule(n):
    ours = flow_timesteps(n, enhance_hf=True)
    expected = release_continuation(n)
    assert len(ours) == len(expected)
    torch.testing.assert_close(ours.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-3, rtol=0)
    if n == 50: assert len(ours) == 56                                                       # 46 above t = 500, then 10


def test_distilled_continuation_schedule():
    "The release runs the distilled continuation with enhance_hf=False: the distilled grid as it is (16 steps)."
    ours = flow_timesteps(16, distilled=True, enhance_hf=False)
    torch.testing.assert_close(ours.double(), torch.tensor(shifted(distilled_sigmas(16)), dtype=torch.float64), atol=1e-3, rtol=0)
    published = [1000.0, 994.7090, 988.7640, 982.0360, 974.3589, 965.5172, 955.2239, 943.0895, 923.0769, 904.1096,
                 880.3089, 849.5575, 808.2901, 750.0000, 661.4174, 510.6383]                # a third-party port's printout
    torch.testing.assert_close(ours.double(), torch.tensor(published, dtype=torch.float64), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="enhance_hf=False"): flow_timesteps(16, distilled=True, enhance_hf=True)


@pytest.mark.parametrize("n", [50, 30])
def test_refinement_schedule(n):
    ours = flow_timesteps(n, t_thresh=0.5)
    torch.testing.assert_close(ours.double(), torch.tensor(release_refinement(n), dtype=torch.float64), atol=1e-3, rtol=0)
    if n == 50: assert len(ours) == 5
    with pytest.raises(ValueError, match="two different schedules"): flow_timesteps(n, enhance_hf=True, t_thresh=0.5)


@pytest.mark.parametrize("kw", [dict(enhance_hf=True), dict(t_thresh=0.5)])
def test_scheduler_steps_edited_schedule(kw):
    "As in the release, the edited schedule's σ are timesteps / 1000 with a terminal 0, and the Euler step uses them."
    sched = FlowMatchEulerDiscreteScheduler(shift=12.0)
    LongCatVideoPipeline._set_schedule(SimpleNamespace(scheduler=sched), torch.linspace(1, 0.001, 50), "cpu", **kw)
    ts = flow_timesteps(50, **kw)
    assert torch.equal(sched.timesteps, ts)
    assert torch.equal(sched.sigmas, torch.cat([ts / 1000, torch.zeros(1)]))
    x, v = torch.zeros(1, 4), torch.ones(1, 4)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(v, t, x, return_dict=False)[0]
    torch.testing.assert_close(x, torch.full((1, 4), -ts[0].item() / 1000))               # Σ dσ = 0 − σ_0


# --- the pipeline on the tiny checkpoint ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    p = LongCatVideoPipeline.from_pretrained(tiny_checkpoint(), torch_dtype=torch.float32, device="cpu")
    p.set_progress_bar_config(disable=True)
    return p


def clip(frames=9, w=64, h=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)


SMALL = dict(width=64, height=48, num_frames=17, num_cond_frames=5, num_inference_steps=2, enhance_hf=False)  # 2 steps


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_continuation_keeps_conditioning_frames_bit_exact(pipe, guidance):
    video = clip()
    cond = pipe.encode_video(video[-5:])
    for kv in (True, False):
        lat = pipe.continue_video(video, "a red ball", guidance_scale=guidance, kv_cache=kv, output_type="latent",
                                  generator=torch.Generator().manual_seed(0), **SMALL).frames
        assert lat.shape == (1, 16, 5, 6, 8)
        assert torch.equal(lat[:, :, :2], cond)


def test_kv_cache_matches_uncached_sampling(pipe):
    """Without guidance the cached and uncached continuations agree to float noise. (With guidance they differ a
    little by design, in the release too: CFG-Zero*'s s* is taken over the noise frames only when cached.)"""
    kw = dict(guidance_scale=1.0, output_type="latent", **SMALL)
    a = pipe.continue_video(clip(), "a red ball", kv_cache=True, generator=torch.Generator().manual_seed(1), **kw).frames
    b = pipe.continue_video(clip(), "a red ball", kv_cache=False, generator=torch.Generator().manual_seed(1), **kw).frames
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_continuation_rejects_bad_frame_counts(pipe):
    with pytest.raises(ValueError, match="use 13 or 17"): pipe.continue_video(clip(), "x", num_cond_frames=14)
    with pytest.raises(ValueError, match="give a longer video"): pipe.continue_video(clip(3), "x", **SMALL)


def test_long_video_from_a_video(pipe, tmp_path):
    "Three continuation segments of a given 9-frame video: 9 + 3·12 frames, the input kept as it was, one mp4."
    import av
    video = clip()
    out = pipe.generate_long_video("a red ball", num_segments=3, video=video, generator=torch.Generator().manual_seed(0),
                                   output_path=tmp_path / "long.mp4", progress=False, guidance_scale=1.0, **SMALL)
    assert out.shape == (long_video_frames(3, 17, 5, start_frames=9), 48, 64, 3) == (45, 48, 64, 3)
    assert np.array_equal(out[:9], video)
    with av.open(str(tmp_path / "long.mp4")) as f: assert sum(1 for _ in f.decode(video=0)) == 45


def test_segment_counts():
    assert long_video_frames(3) == 93 + 2 * 80 == 253
    assert segments_for_seconds(253 / 15) == 3 and segments_for_seconds(253 / 15 + 0.01) == 4
    assert segments_for_seconds(10, start_frames=100) == 1 and long_video_frames(1, start_frames=100) == 180


def test_refinement_layout_matches_release():
    "generate_refine's padding, recomputed from its formulas, for the release's segment shapes and a few others."
    def release(n_out, c):
        lat_c = added_c = 0
        if c > 0:
            lat_c = 1 + math.ceil((c - 1) / 4)
            lat_c = math.ceil(lat_c / 4) * 4
            added_c = 1 + (lat_c - 1) * 4 - c
        lat_n = math.ceil(math.ceil((n_out - c) / 4) / 4) * 4
        return lat_c, added_c, lat_n * 4 - (n_out - c)
    for n_out, c in [(186, 0), (186, 26), (34, 0), (34, 10), (18, 0), (100, 6)]:
        assert refine_layout(n_out, c) == release(n_out, c)


def test_refinement_with_released_lora_format(pipe):
    """One refinement pass of 9 frames → 18 frames at 96×64 with the tiny checkpoint's refinement_lora.safetensors
    (official format): the adapter is active — on the adaLN layers too, which only the refinement LoRA targets —
    and the guidance-free t_thresh schedule runs; afterwards the adapter is detached again."""
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[1][0, -1].item(), tuple(m.active_adapters()),
                                      "refinement_lora" in m.blocks[0].adaLN_modulation[1].lora_A)), with_kwargs=True)
    try:
        hd = pipe.refine(clip(), width=96, height=64, num_inference_steps=10, sparse=False,
                         generator=torch.Generator().manual_seed(0))
    finally: hook.remove()
    assert hd.shape == (18, 64, 96, 3) and hd.dtype == np.uint8
    assert [t for t, _, _ in seen] == pytest.approx(flow_timesteps(10, t_thresh=0.5).tolist())
    assert all(a == ("refinement_lora",) and on for _, a, on in seen)
    assert "refinement_lora" not in (getattr(pipe.transformer, "peft_config", None) or {})


def test_refinement_of_a_continuation_leaves_out_its_conditioning(pipe):
    "With cond_video + num_cond_frames (the output rate) the first pass is conditioned and those frames are not returned."
    stage1, original = clip(9), clip(10, 96, 64, seed=3)
    hd = pipe.refine(stage1, width=96, height=64, num_inference_steps=10, sparse=False, cond_video=original,
                     num_cond_frames=6, generator=torch.Generator().manual_seed(0))
    assert hd.shape == (18 - 6, 64, 96, 3)


def test_continuation_training_loss_ignores_conditioning_frames():
    "The trainer's flow_inputs/flow_loss with K = 4 conditioning latents (a continuation sample): clean, t = 0, no loss."
    g = torch.Generator().manual_seed(0)
    x0, noise, sigma = torch.randn(2, 16, 6, 4, 4, generator=g), torch.randn(2, 16, 6, 4, 4, generator=g), torch.tensor([0.3, 0.8])
    x, t = flow_inputs(x0, noise, sigma, num_cond_latents=4)
    assert torch.equal(x[:, :, :4], x0[:, :, :4]) and (t[:, :4] == 0).all() and (t[:, 4:] > 0).all()
    target, pred = x0 - noise, torch.randn(2, 16, 6, 4, 4, generator=g)
    other = pred.clone()
    other[:, :, :4] += 100
    assert flow_loss(other, target, 4) == flow_loss(pred, target, 4)
    other[:, :, 4] += 1
    assert flow_loss(other, target, 4) > flow_loss(pred, target, 4)
