"""LoRA files that work where users generate (issue 21): every export read back to the same ΔW; the
ComfyUI-WanVideoWrapper file covers every module of the wrapper's LongCat model; the coverage report flags loaders that
would apply a file only in part or at another strength; LoRAs in each foreign layout read like their kohya-style twin;
and a short training run exported in every format samples the same video from each file."""
import re
from pathlib import Path

import pytest
import torch
from fastcore.test import test_eq as eq_
from safetensors import safe_open

from longcat_nb.cli import main
from longcat_nb.config import LORA_FORMATS, LORA_LOADERS, load_config
from longcat_nb.lora import (REFINEMENT_LORA_TARGETS, add_lora, base_weights, load_lora, lora_coverage, lora_factors,
                             lora_state_dict, read_lora, save_lora)
from longcat_nb.model import TINY_DIT_CONFIG, LongCatVideoTransformer3DModel

ALL_TARGETS = REFINEMENT_LORA_TARGETS + ["cross_attn.proj", "y_embedder.y_proj.0", "y_embedder.y_proj.2"]

# The LongCat model of ComfyUI-WanVideoWrapper, as its public code builds it (kijai/ComfyUI-WanVideoWrapper,
# wanvideo/modules/model.py at commit 0cf30c6): WanAttentionBlock(is_longcat=True) has `self_attn` and `cross_attn`
# with separate q, k, v, o linears, `ffn` = LongCat's FeedForwardSwiGLU (w1, w2, w3) and `modulation =
# Sequential(SiLU, Linear(512, 6·dim))`; WanModel(is_longcat=True) has `head = Head_adaLN` (head.head,
# head.modulation = Sequential(SiLU, Linear)) and `text_embedding = Sequential(Linear, GELU, Linear)`. Written out
# here by hand, not derived from longcat_nb's table, so that a wrong table fails.
WRAPPER_BLOCK = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.w1", "ffn.w2", "ffn.w3", "modulation.1"]
WRAPPER_TOP = ["head.head", "head.modulation.1", "text_embedding.0", "text_embedding.2"]


def wrapper_modules(depth: int) -> set[str]:
    return {f"blocks.{i}.{m}" for i in range(depth) for m in WRAPPER_BLOCK} | set(WRAPPER_TOP)


def tiny(seed=0):
    torch.manual_seed(seed)
    m = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG)
    for p in m.parameters(): p.data.normal_(0, 0.2)
    return m.eval()


def with_lora(targets=ALL_TARGETS, rank=4, alpha=2.0, use_dora=False, seed=1):
    "A tiny model carrying a LoRA with random factors (a trained one's shape, without the training)."
    m = tiny()
    add_lora(m, rank, alpha, target_modules=targets, use_dora=use_dora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.requires_grad: p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "magnitude" in n else 0.0))
    return m


def outputs(model, seed=3, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    inp = dict(hidden_states=torch.randn(2, 16, 3, 4, 6, generator=g), timestep=torch.tensor([250.0, 800.0]),
               encoder_hidden_states=torch.randn(2, 1, 6, TINY_DIT_CONFIG["caption_channels"], generator=g),
               encoder_attention_mask=torch.ones(2, 6, dtype=torch.long))
    with torch.no_grad(): return model(**{k: v.to(device) for k, v in inp.items()}).sample


@pytest.mark.parametrize("fmt", LORA_FORMATS)
def test_every_export_reads_back_to_the_same_delta(fmt, tmp_path):
    m = with_lora()
    want = lora_factors(m)
    got = read_lora(save_lora(m, tmp_path / "lora.safetensors", fmt))[1]
    eq_(sorted(got), sorted(want))
    for name, f in want.items():             # scale 0.5 is a power of two: folding it into lora_B is exact too
        assert torch.equal(got[name].delta(), f.delta()), (fmt, name)


def test_alpha_not_rank_stays_exact_where_the_loader_ignores_alpha(tmp_path):
    m = with_lora(rank=4, alpha=3.0)                                     # scale 0.75
    plain = save_lora(m, tmp_path / "a.safetensors", "peft_noprefix")
    meta = safe_open(str(plain), "pt").metadata()
    assert "lora_scale_folded" in meta
    _, got = read_lora(plain)
    for name, f in lora_factors(m).items():
        eq_(got[name].scale, 1.0)
        torch.testing.assert_close(got[name].delta(), f.delta(), rtol=1e-6, atol=1e-7)
    eq_(lora_coverage(plain, "diffsynth", m).verdict, "full")             # DiffSynth ignores alpha: the file needs none
    peft = save_lora(m, tmp_path / "b.safetensors", "peft")
    eq_(lora_coverage(peft, "wan2gp", m).verdict, "inexact")              # alpha only in the config: Wan2GP uses 1.0
    eq_(lora_coverage(peft, "simpletuner", m).verdict, "full")


def test_wrapper_export_covers_every_module_of_the_wrappers_longcat():
    m = with_lora()
    sd = lora_state_dict(lora_factors(m), "wan")
    names = {re.fullmatch(r"diffusion_model\.(.+)\.(lora_down\.weight|lora_up\.weight|alpha)", k)[1] for k in sd}
    eq_(names, wrapper_modules(TINY_DIT_CONFIG["depth"]))
    c = lora_coverage(sd, "comfyui-wrapper", m)
    eq_((c.verdict, c.covered, c.model_modules), ("full", len(names), len(names)))
    eq_(c.skipped_keys, [])


# What each loader's key rules make of each export (alpha = rank / 2): the README's interop table, cell by cell.
EXPECTED = {
    "peft": dict(official="error", wan2gp="inexact", diffsynth="none", simpletuner="full",
                 **{"videox-fun": "none", "comfyui-wrapper": "partial"}),
    "kohya": dict(official="error", wan2gp="full", diffsynth="none", simpletuner="none",
                  **{"videox-fun": "full", "comfyui-wrapper": "partial"}),
    "official": dict(official="full", wan2gp="none", diffsynth="none", simpletuner="none",
                     **{"videox-fun": "error", "comfyui-wrapper": "none"}),
    "wan": dict(official="error", wan2gp="partial", diffsynth="none", simpletuner="none",
                **{"videox-fun": "partial", "comfyui-wrapper": "full"}),
    "peft_noprefix": dict(official="error", wan2gp="full", diffsynth="full", simpletuner="none",
                          **{"videox-fun": "full", "comfyui-wrapper": "partial"}),
}


@pytest.mark.parametrize("fmt", LORA_FORMATS)
def test_each_export_in_each_loader_as_the_readme_says(fmt, tmp_path):
    m = with_lora()
    path = save_lora(m, tmp_path / f"lora_{fmt}.safetensors", fmt)
    eq_({loader: lora_coverage(path, loader, m).verdict for loader in LORA_LOADERS}, EXPECTED[fmt])


def test_coverage_report_flags_partial_loads(tmp_path, capsys):
    m = with_lora()
    kohya = save_lora(m, tmp_path / "lora_kohya.safetensors", "kohya")
    c = lora_coverage(kohya, "comfyui-wrapper", m)
    eq_(c.verdict, "partial")                                            # the wrapper: only the FFN names are shared
    eq_({n.split(".", 2)[2] for n in c.applied}, {"ffn.w1", "ffn.w2", "ffn.w3"})
    assert "WARNING partial" in c.line()
    eq_(lora_coverage(kohya, "wan2gp", m).verdict, "full")
    peft = save_lora(m, tmp_path / "lora_peft.safetensors", "peft")
    eq_([lora_coverage(peft, x, m).verdict for x in ("videox-fun", "diffsynth")], ["none", "none"])   # the prefix
    # a file that only partly matches a loader's names: the wrapper's own file with one released-name module added
    wan = lora_state_dict(lora_factors(m), "wan")
    extra = with_lora(targets=["t_embedder.mlp.0"], seed=2)
    wan.update(lora_state_dict(lora_factors(extra), "kohya"))
    c = lora_coverage(wan, "comfyui-wrapper", m)
    eq_((c.verdict, c.partly, [k.split(".lora_")[0] for k in c.skipped_keys if ".lora_" in k][:1]),
        ("partial", [], ["diffusion_model.t_embedder.mlp.0"]))
    eq_(main(["lora", "check", str(kohya), "--for", "comfyui-wrapper"]), 1)
    assert "comfyui-wrapper: WARNING partial" in capsys.readouterr().out
    eq_(main(["lora", "check", str(save_lora(m, tmp_path / "w.safetensors", "wan")), "--for", "comfyui-wrapper"]), 0)


def test_coverage_report_flags_loaders_that_stop_or_drop_dora(tmp_path):
    m = with_lora(use_dora=True)
    kohya = save_lora(m, tmp_path / "dora.safetensors", "kohya")
    eq_(lora_coverage(kohya, "videox-fun", m).verdict, "error")           # merge_lora cannot split '.dora_scale' keys
    eq_(lora_coverage(kohya, "wan2gp", m).verdict, "full")
    big = with_lora(targets=["ffn.w2"], rank=130)
    with pytest.warns(UserWarning, match="lora_network_dim=130"): sd = lora_state_dict(lora_factors(big), "official")
    c = lora_coverage(sd, "official", big)
    assert c.verdict == "error" and "lora_network_dim=130" in c.failure


def kohya_twin(factors: dict) -> dict:
    "The kohya-style file of `{module: (down, up, scale)}`."
    sd = {}
    for name, (down, up, scale) in factors.items():
        sd |= {f"diffusion_model.{name}.lora_down.weight": down, f"diffusion_model.{name}.lora_up.weight": up,
               f"diffusion_model.{name}.alpha": torch.tensor(scale * down.shape[0])}
    return sd


def foreign_loras(rank=4):
    """One random LoRA spelled in each layout in circulation, from the published key patterns, and its kohya twin.
    Wan-named files carry their own `down` per piece (as trained on the split layers), so the twin's fused layers
    are block-diagonal."""
    g = torch.Generator().manual_seed(7)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.1
    model, h, depth = tiny(), TINY_DIT_CONFIG["hidden_size"], TINY_DIT_CONFIG["depth"]
    names = [f"blocks.{i}.{n}" for i in range(depth) for n in ("attn.proj", "cross_attn.q_linear", "ffn.w1")]
    plain = {n: (rnd(rank, h), rnd(model.get_submodule(n).out_features, rank), 0.5) for n in names}
    qkv = {i: [(rnd(rank, h), rnd(h, rank)) for _ in range(3)] for i in range(depth)}
    fused = {f"blocks.{i}.attn.qkv": (torch.cat([d for d, _ in p]), torch.block_diag(*[u for _, u in p]), 0.5)
             for i, p in qkv.items()}
    twin = kohya_twin(plain | fused)
    a = lambda d: torch.tensor(0.5 * d.shape[0])
    files = {}
    files["diffsynth"] = {f"{n}.lora_{ab}.default.weight": t for n, (d, u, s) in plain.items()
                          for ab, t in (("A", d), ("B", u * s))}                          # no alpha: scale folded
    for prefix in ("lora_unet_", "lora_unet__"):                                # musubi, VideoX-Fun's comfy files
        files[prefix] = {f"{prefix}{n.replace('.', '_')}.{p}": t for n, (d, u, s) in plain.items()
                         for p, t in (("lora_down.weight", d), ("lora_up.weight", u), ("alpha", a(d)))}
    for prefix in ("diffusion_model.", "lora_unet_"):                                     # Wan names, split q/k/v
        sep = "." if prefix.endswith(".") else "_"
        files[f"wan {prefix}"] = {f"{prefix}{f'blocks.{i}.self_attn.{x}'.replace('.', sep)}.{p}": t
                                  for i, pieces in qkv.items() for x, (d, u) in zip("qkv", pieces)
                                  for p, t in (("lora_down.weight", d), ("lora_up.weight", u), ("alpha", a(d)))}
    files["peft with .alpha"] = {f"transformer.{n}.{p}": t for n, (d, u, s) in plain.items()
                                 for p, t in (("lora_A.weight", d), ("lora_B.weight", u), ("alpha", a(d)))}
    files["peft base_model.model."] = {f"base_model.model.{n}.lora_{ab}.weight": t for n, (d, u, s) in plain.items()
                                       for ab, t in (("A", d), ("B", u * s))}
    files["official"] = {}
    for i, pieces in qkv.items():                                              # the release's block form
        stem = f"lora___lorahyphen___blocks___lorahyphen___{i}___lorahyphen___attn___lorahyphen___qkv"
        d, _, s = fused[f"blocks.{i}.attn.qkv"]
        files["official"] |= {f"{stem}.lora_down.weight": d, f"{stem}.alpha_scale": torch.tensor(s)}
        files["official"] |= {f"{stem}.lora_up.blocks.{j}.weight": u for j, (_, u) in enumerate(pieces)}
    parts = {"diffsynth": plain, "lora_unet_": plain, "lora_unet__": plain, "wan diffusion_model.": fused,
             "wan lora_unet_": fused, "peft with .alpha": plain, "peft base_model.model.": plain, "official": fused}
    return files, {k: kohya_twin(v) for k, v in parts.items()}, twin


def test_foreign_layouts_read_like_their_kohya_twin():
    files, twins, _ = foreign_loras()
    for layout, sd in files.items():
        _, got = read_lora(sd)
        _, want = read_lora(twins[layout])
        eq_(sorted(got), sorted(want))
        for name, f in want.items():
            torch.testing.assert_close(got[name].delta(), f.delta(), rtol=0, atol=0, msg=f"{layout}: {name}")
        a, b = tiny(), tiny()
        load_lora(a, sd), load_lora(b, twins[layout])
        assert torch.equal(outputs(a), outputs(b)), layout


def test_train_export_every_format_then_sample_the_same_video(example, tmp_path, capsys):
    from longcat_nb.sampling import LongCatVideoPipeline
    from longcat_nb.tiny import tiny_checkpoint
    from longcat_nb.training import train
    cfg = load_config(example)
    cfg.output_dir, cfg.validation_prompt, cfg.report_to = tmp_path, None, "none"
    cfg.max_train_steps, cfg.lora_rank, cfg.lora_alpha, cfg.lora_export_formats = 2, 4, 2.0, list(LORA_FORMATS)
    result = train(cfg)
    out = capsys.readouterr().out
    eq_(sorted(Path(p).name for p in result.lora_paths), sorted(f"lora_{f}.safetensors" for f in LORA_FORMATS))
    for p in result.lora_paths:                           # one verdict per loader, printed for every file
        assert all(f"{Path(p).name}: {loader}: " in out for loader in LORA_LOADERS), out
    assert "lora_wan.safetensors: comfyui-wrapper: ok" in out
    assert "lora_kohya.safetensors: comfyui-wrapper: WARNING partial" in out
    meta = safe_open(str(tmp_path / "lora_wan.safetensors"), "pt").metadata()
    eq_((meta["steps"], meta["lora_rank"], meta["lora_alpha"]), ("2", "4", "2.0"))
    eq_(meta["base_model_precision"], cfg.base_model_precision)
    assert meta["checkpoint_dit_sha256"] != "unknown" and "example" in meta["training_resolution"]
    videos = {}
    for p in result.lora_paths:
        pipe = LongCatVideoPipeline.from_pretrained(tiny_checkpoint(), torch_dtype=torch.float32, device="cpu")
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora(p)
        videos[Path(p).name] = pipe(prompt="a red ball", width=64, height=64, num_frames=5, num_inference_steps=2,
                                    generator=torch.Generator().manual_seed(0), output_type="pt").frames
    ref = videos["lora_peft.safetensors"]
    for name, v in videos.items(): assert torch.equal(v, ref), name
    base = LongCatVideoPipeline.from_pretrained(tiny_checkpoint(), torch_dtype=torch.float32, device="cpu")
    base.set_progress_bar_config(disable=True)
    plain = base(prompt="a red ball", width=64, height=64, num_frames=5, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert not torch.equal(plain, ref)                   # the LoRA changes the video: the comparison can fail


def test_dora_files_load_back_and_match_comfyuis_dora_rule(tmp_path):
    m = with_lora(use_dora=True)
    want = outputs(m)
    for fmt in ("peft", "kohya", "wan"):
        fresh = tiny()
        load_lora(fresh, save_lora(m, tmp_path / f"{fmt}.safetensors", fmt))
        assert (outputs(fresh) - want).abs().max() <= 1e-6 * want.abs().max(), fmt    # converting the magnitude: fp32
    # ComfyUI applies `.dora_scale` d [out, 1] as (W + ΔW) · d / (‖W_row‖ + eps) (comfy/weight_adapter/base.py,
    # weight_decompose, output axis); PEFT's layer gives m · (W + ΔW) / ‖(W + ΔW)_row‖. The same weight, from the file:
    sd = lora_state_dict(lora_factors(m), "kohya", base_weights=base_weights(m))
    layer = m.get_submodule("blocks.1.cross_attn.kv_linear")
    W = layer.base_layer.weight.detach()
    p = "diffusion_model.blocks.1.cross_attn.kv_linear"
    down, up = sd[f"{p}.lora_down.weight"], sd[f"{p}.lora_up.weight"]
    dw = (sd[f"{p}.alpha"] / down.shape[0]) * up @ down
    comfy = (W + dw) * sd[f"{p}.dora_scale"] / (W.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps)
    x = torch.randn(3, W.shape[1])
    with torch.no_grad(): peft = layer(x) - layer.base_layer.bias          # the DoRA layer's x @ Wᵀ
    torch.testing.assert_close(x @ comfy.T, peft, rtol=1e-5, atol=1e-6)
    for fmt in ("official", "peft_noprefix"):
        with pytest.raises(ValueError, match="DoRA cannot be written"): save_lora(m, tmp_path / "x.safetensors", fmt)


def underscored(sd: dict, prefix: str) -> dict:
    "A kohya-style file's keys with underscore module names: `lora_unet_` (musubi) or `lora_unet__` (VideoX-Fun)."
    out = {}
    for k, v in sd.items():
        stem, part = re.fullmatch(r"diffusion_model\.(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)", k).groups()
        out[f"{prefix}{stem.replace('.', '_')}.{part}"] = v
    return out


def test_wrapper_reads_underscore_wan_names_as_its_code_does():
    "`lora_unet__` names go through the wrapper's own parser (attention and FFN only); `lora_unet_` through ComfyUI's."
    attn_ffn = with_lora(targets=None)                         # the default targets: attention and FFN linears
    wan = lora_state_dict(lora_factors(attn_ffn), "wan")
    for prefix in ("lora_unet_", "lora_unet__"):
        eq_(lora_coverage(underscored(wan, prefix), "comfyui-wrapper", attn_ffn).verdict, "full")
    every = with_lora()                                        # + modulation, head, text embedding
    wan = lora_state_dict(lora_factors(every), "wan")
    eq_(lora_coverage(underscored(wan, "lora_unet_"), "comfyui-wrapper", every).verdict, "full")
    c = lora_coverage(underscored(wan, "lora_unet__"), "comfyui-wrapper", every)
    assert c.verdict == "partial" and "blocks.0.adaLN_modulation.1" not in c.applied and "blocks.0.ffn.w1" in c.applied


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_lora_loaded_onto_the_gpu_is_made_there(tmp_path, monkeypatch):
    """`load_lora` onto a model on the GPU makes the LoRA layers there — not on the CPU, initialised and then copied
    over (for the rank-128 cfg_step_lora, 0.8B fp32 parameters, seconds before the preview's first step) — and gives
    the output of the same file loaded on the CPU and moved."""
    path = save_lora(with_lora(), tmp_path / "lora.safetensors", "peft")
    on_cpu = tiny()
    load_lora(on_cpu, path)
    on_gpu, made, init = tiny().cuda(), [], torch.nn.Linear.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self.weight.device.type)
    monkeypatch.setattr(torch.nn.Linear, "__init__", spy)
    load_lora(on_gpu, path)
    monkeypatch.undo()
    eq_(set(made), {"cuda"})
    torch.testing.assert_close(outputs(on_gpu, device="cuda"), outputs(on_cpu.cuda(), device="cuda"), rtol=0, atol=0)
