"""Numerics under autocast (SPEC §12): the fp32 parts of the transformer stay fp32 under accelerate's real bf16 wrapper
and under the trainer's own autocast; the trainer and the sampler share one autocast policy; the declared dependency
floors cover the APIs the code calls."""
import re, tomllib
from pathlib import Path
from unittest import mock

import pytest
import torch
from fastcore.test import test_eq as eq_

from longcat_nb import model as M
from longcat_nb.config import parse_config
from longcat_nb.lora import add_lora

ROOT = Path(__file__).resolve().parents[1]


def tiny(dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    m = M.LongCatVideoTransformer3DModel(**M.TINY_DIT_CONFIG)
    for p in m.parameters(): p.data.normal_(0, 0.2)
    return m.to(dtype).eval()


def inputs(device="cpu", B=2):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, 6, dtype=torch.long); mask[:, 3:] = 0
    return dict(hidden_states=torch.randn(B, 16, 3, 4, 6, generator=g).to(device),
                timestep=torch.tensor([[0.0, 300, 300], [0.0, 700, 700]]).to(device),
                encoder_hidden_states=torch.randn(B, 6, 32, generator=g).to(device), encoder_attention_mask=mask.to(device),
                num_cond_latents=1)


def watch_fp32_parts(model):
    "Forward hooks on the parts SPEC §2 keeps in fp32; returns ({path: output dtype}, handles)."
    seen = {}
    parts = ["t_embedder", "final_layer", "final_layer.adaLN_modulation"] + \
            [f"blocks.{i}.adaLN_modulation" for i in range(len(model.blocks))]
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o.dtype)) for n in parts]
    return seen, hooks


def test_fp32_parts_survive_accelerates_bf16_wrapper():
    "accelerate's `mixed_precision='bf16'` wraps the forward in a bf16 autocast; the fp32 parts stay fp32 inside it."
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    plain, wrapped = tiny(), tiny()
    add_lora(plain, 4, target_modules=["attn.qkv", "adaLN_modulation.1"]); add_lora(wrapped, 4, target_modules=["attn.qkv", "adaLN_modulation.1"])
    wrapped.load_state_dict(plain.state_dict())
    AcceleratorState._reset_state(reset_partial_state=True)             # accelerate's state is a process-wide singleton
    try:
        acc = Accelerator(cpu=True, mixed_precision="bf16")
        wrapped = acc.prepare(wrapped)
        seen, hooks = watch_fp32_parts(acc.unwrap_model(wrapped))
        with torch.no_grad():
            got = wrapped(**inputs()).sample
            want = plain(**inputs()).sample
        for h in hooks: h.remove()
    finally: AcceleratorState._reset_state(reset_partial_state=True)
    eq_(len(seen), 3 + len(plain.blocks))
    eq_(set(seen.values()), {torch.float32})
    eq_(got.dtype, torch.float32)
    # bf16 weights, fp32 LoRA: only the LoRA matmuls move to bf16 under autocast — bf16 matmul noise, nothing more
    assert ((got - want).norm() / want.norm()).item() < 1e-2


def test_trainer_and_sampler_share_the_autocast(tmp_path):
    "The trainer steps and the pipeline samples under `compute_autocast(device, cfg.mixed_precision)`, nothing else."
    from longcat_nb import sampling, training
    cfg = parse_config({"mixed_precision": "no"})
    eq_(training._accelerator(cfg).mixed_precision, "no")               # accelerate adds no autocast of its own
    calls = []
    real = M.compute_autocast
    with mock.patch.object(sampling, "compute_autocast", lambda d, mp: calls.append(mp) or real(d, mp)):
        from longcat_nb.tiny import build_tiny_checkpoint
        pipe = sampling.LongCatVideoPipeline.from_pretrained(build_tiny_checkpoint(tmp_path / "ckpt"), torch_dtype=torch.float32,
                                                             device="cpu", mixed_precision="no")
        pipe.set_progress_bar_config(disable=True)
        pipe("a red ball", width=64, height=64, num_frames=5, num_inference_steps=2, output_type="latent")
    eq_(calls, ["no", "no"])
    eq_(type(M.compute_autocast("cpu", "bf16")).__name__, "nullcontext")  # the CPU computes in fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast")
def test_training_step_under_cuda_autocast():
    "On CUDA the training forward runs in a bf16 autocast: the LoRA matmuls are bf16, the fp32 parts stay fp32."
    from longcat_nb.training import flow_matching_loss
    model = tiny().cuda()
    add_lora(model, 4)
    seen, hooks = watch_fp32_parts(model)
    lora_dtypes = []
    hooks.append(model.blocks[0].attn.qkv.lora_A["default"].register_forward_hook(lambda m, a, o: lora_dtypes.append(o.dtype)))
    x = inputs("cuda")
    batch = {"latents": x["hidden_states"], "text_emb": x["encoder_hidden_states"], "text_mask": x["encoder_attention_mask"],
             "num_cond_latents": 1}
    empty = (torch.zeros(6, 32), torch.zeros(6, dtype=torch.long))
    with M.compute_autocast("cuda", "bf16"):
        loss = flow_matching_loss(model, batch, torch.tensor([0.5, 0.9]), torch.zeros(2, dtype=torch.bool),
                                  torch.randn(2, 16, 3, 4, 6), empty)
    loss.backward()
    for h in hooks: h.remove()
    eq_(set(seen.values()), {torch.float32})
    eq_(set(lora_dtypes), {torch.bfloat16})
    assert torch.isfinite(loss)


# The newest API each dependency floor must cover: (package, minimum, what needs it).
FLOORS = [("transformers", (4, 56), "UMT5EncoderModel.from_pretrained(dtype=...) in caching.load_text_encoder"),
          ("accelerate", (1, 6), "FullyShardedDataParallelPlugin.fsdp_version (FSDP2) in training.fsdp_plugin"),
          ("diffusers", (0, 35), "AutoencoderKLWan, lora_base.LORA_ADAPTER_METADATA_KEY"),
          ("peft", (0, 15), "peft.utils.other.get_pattern_key")]


def test_dependency_floors_cover_the_apis_used():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {m[1]: tuple(int(x) for x in m[2].split(".")[:2]) for d in deps if (m := re.match(r"([\w-]+)>=([\d.]+)", d))}
    for pkg, need, why in FLOORS:
        assert floors.get(pkg, (0, 0)) >= need, f"pyproject: {pkg}>={'.'.join(map(str, floors.get(pkg, ())))} is below " \
                                                f"{'.'.join(map(str, need))}, which {why} needs"
    src = (ROOT / "longcat_nb" / "caching.py").read_text()
    assert "UMT5EncoderModel.from_pretrained(" in src and "dtype=dtype" in src   # the API the transformers floor is for
