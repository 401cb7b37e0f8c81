"""LoRA in the GEMM epilogue (`lora.LoraEpilogueLinear`, issue 22) against PEFT's own layer on the tiny model: fp32
to float rounding; under the trainer's bf16 autocast (checkpointed keeping attention, chunked FFN backward, fp32
modulation layers adapted) within bf16 noise and no farther from the fp32 values than PEFT; on an int8-quantised base
(optimum-quanto, the tiny checkpoint); in compiled blocks; and the same state dict and the same saved files."""
import pytest
import torch
from safetensors import safe_open
from fastcore.test import test_eq as eq_

from longcat_nb.lora import (REFINEMENT_LORA_TARGETS, LoraEpilogueLinear, PeftLoraLinear, add_lora, lora_layers,
                             save_lora, set_lora_epilogue, set_lora_input_cast)
from longcat_nb.model import (TINY_DIT_CONFIG, LongCatVideoTransformer3DModel, checkpoint_keeping_attention,
                              set_ffn_chunks)


def tiny(dtype=torch.float32, targets=None, base=None):
    "The tiny model (random weights, or `base`) with a random rank-4 fp32 LoRA (scale 0.5) on `targets`."
    torch.manual_seed(0)
    if base is None:
        base = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG)
        for p in base.parameters(): p.data.normal_(0, 0.2)
        base = base.to(dtype)
    add_lora(base, rank=4, alpha=2, target_modules=targets)
    g = torch.Generator().manual_seed(1)
    for n, p in base.named_parameters():
        if p.requires_grad: p.data = 0.2 * torch.randn(p.shape, generator=g)
    return base.train()


def step(model, autocast=False, dtype=torch.float32):
    "Output and LoRA gradients of one forward and backward on fixed inputs (one conditioning frame)."
    g = torch.Generator().manual_seed(2)
    inp = dict(hidden_states=torch.randn(2, 16, 3, 4, 6, generator=g).to(dtype), timestep=torch.tensor([250.0, 800.0]),
               encoder_hidden_states=torch.randn(2, 1, 6, model.config.caption_channels, generator=g).to(dtype),
               num_cond_latents=1)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast): sample = model(**inp).sample
    sample.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return sample.detach(), grads


def rel(a, b): return ((a.float() - b.float()).norm() / b.float().norm()).item()


def distance(a, b):
    "Relative distance of step `a` from step `b`: (output, all LoRA gradients as one vector)."
    return rel(a[0], b[0]), rel(*(torch.cat([s[1][n].flatten() for n in b[1]]) for s in (a, b)))


def both_paths(model, **kw):
    "The step with the epilogue, then with PEFT's layers (the same parameters)."
    epilogue = step(model, **kw)
    eq_(set_lora_epilogue(model, False) > 0, True)
    return epilogue, step(model, **kw)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_add_lora_uses_the_epilogue_and_fp32_matches_peft():
    model = tiny()
    layers = lora_layers(model)
    eq_({type(m) for m in layers.values()}, {LoraEpilogueLinear})
    epilogue, peft = both_paths(model)
    eq_({type(m) for m in layers.values()}, {PeftLoraLinear})
    out, grads = distance(epilogue, peft)
    assert out < 1e-6 and grads < 1e-5, (out, grads)


@pytest.mark.parametrize("targets", [None, REFINEMENT_LORA_TARGETS])
def test_bf16_autocast_within_bf16_noise(targets):
    """The trainer's path: bf16 base, fp32 LoRA without PEFT's input cast, bf16 autocast, checkpointed keeping
    attention, FFN backward in 2 chunks; with the refinement targets the fp32 modulation layers take PEFT's sum."""
    model = tiny(torch.bfloat16, targets)
    set_lora_input_cast(model, False)
    set_ffn_chunks(model, 2)
    model.enable_gradient_checkpointing(checkpoint_keeping_attention)
    exact = tiny(torch.float32, targets)
    exact.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    exact = step(exact)
    epilogue, peft = both_paths(model, autocast=True)
    (eo, eg), (po, pg), (bo, bg) = distance(epilogue, exact), distance(peft, exact), distance(epilogue, peft)
    print(f"vs fp32: epilogue out {eo:.2e} grads {eg:.2e}; PEFT out {po:.2e} grads {pg:.2e}; between {bo:.2e} {bg:.2e}")
    assert bo < 1e-2 and bg < 1e-2, (bo, bg)
    assert eo <= 1.25 * po and eg <= 1.25 * pg, ((eo, eg), (po, pg))


def test_int8_quanto_base():
    """On the tiny checkpoint quantised to int8 (quanto's output is a view: the sum goes to a new tensor): under bf16
    autocast within bf16 noise of PEFT; without autocast (bf16 base, fp32 LoRA) PEFT's sum, bit for bit."""
    from longcat_nb.quantise import is_quantised, load_transformer
    from longcat_nb.tiny import tiny_checkpoint
    load = lambda: load_transformer(tiny_checkpoint(), torch.bfloat16, precision="int8-quanto", device="cpu",
                                    progress=False)
    model = tiny(base=load())
    assert is_quantised(model.blocks[0].attn.qkv.base_layer)
    set_lora_input_cast(model, False)
    calls = []
    real = torch.addmm
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or real(*a, **k))
        epilogue = step(model, autocast=True, dtype=torch.bfloat16)
    eq_(len(calls), 3 * len(model.blocks))     # quanto's bias-free linears (ffn.w1, w2, w3) return views: out of place
    set_lora_epilogue(model, False)
    out, grads = distance(epilogue, step(model, autocast=True, dtype=torch.bfloat16))
    print(f"int8 base, bf16 autocast: epilogue vs PEFT out {out:.2e} grads {grads:.2e}")
    assert out < 1e-2 and grads < 1e-2, (out, grads)
    model = tiny(base=load())
    epilogue, peft = both_paths(model, dtype=torch.bfloat16)
    assert torch.equal(epilogue[0], peft[0]) and all(torch.equal(epilogue[1][n], g) for n, g in peft[1].items())


def test_compiled_blocks():
    "compile_blocks (aot_eager, fullgraph) traces the epilogue: the same output and LoRA gradients as eager."
    model = tiny()
    eager = step(model)
    torch._dynamo.reset()
    model.compile_blocks(backend="aot_eager", fullgraph=True)
    out, grads = distance(step(model), eager)
    torch._dynamo.reset()
    assert out < 1e-6 and grads < 1e-5, (out, grads)


@pytest.mark.parametrize("format", ["peft", "kohya", "official"])
def test_same_state_dict_and_files(tmp_path, format):
    """Only the class differs: the state dict (keys, values) is PEFT's, and so is every saved file — its metadata and
    each tensor byte for byte (safetensors orders the header's metadata as it likes, so not the file's bytes)."""
    model = tiny()
    state = model.state_dict()
    epilogue = _saved(save_lora(model, tmp_path / "epilogue.safetensors", format=format))
    set_lora_epilogue(model, False)
    eq_(list(model.state_dict()), list(state))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    peft = _saved(save_lora(model, tmp_path / "peft.safetensors", format=format))
    eq_(peft, epilogue)


def _saved(path):
    "A safetensors file as (metadata, {key: (dtype, shape, bytes)})."
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    raw = lambda t: t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
    return meta, {k: (t.dtype, tuple(t.shape), raw(t)) for k, t in tensors.items()}


@cuda
def test_cuda_bf16_autocast_within_bf16_noise():
    """On the GPU under the trainer's autocast (`compute_autocast`, cuBLAS' addmm epilogue), checkpointed keeping
    attention: within bf16 noise of PEFT's path and no farther from the fp32 values."""
    from longcat_nb.model import compute_autocast
    model = tiny(torch.bfloat16).cuda()
    set_lora_input_cast(model, False)
    model.enable_gradient_checkpointing(checkpoint_keeping_attention)
    exact = tiny().cuda()
    exact.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    def run(m, ac):
        g = torch.Generator().manual_seed(2)
        text = torch.randn(2, 1, 6, m.config.caption_channels, generator=g).cuda()
        inp = dict(hidden_states=torch.randn(2, 16, 3, 4, 6, generator=g).cuda(),
                   timestep=torch.tensor([250.0, 800.0]).cuda(), encoder_hidden_states=text, num_cond_latents=1)
        with compute_autocast("cuda") if ac else torch.autocast("cuda", enabled=False):
            sample = m(**inp).sample
        sample.float().square().mean().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
        m.zero_grad(set_to_none=True)
        return sample.detach(), grads
    exact = run(exact, False)
    epilogue = run(model, True)
    set_lora_epilogue(model, False)
    peft = run(model, True)
    (eo, eg), (po, pg), (bo, bg) = distance(epilogue, exact), distance(peft, exact), distance(epilogue, peft)
    print(f"CUDA vs fp32: epilogue out {eo:.2e} grads {eg:.2e}; PEFT out {po:.2e} grads {pg:.2e}; "
          f"between {bo:.2e} {bg:.2e}")
    assert bo < 1e-2 and bg < 1e-2, (bo, bg)
    assert eo <= 1.25 * po and eg <= 1.25 * pg, ((eo, eg), (po, pg))
