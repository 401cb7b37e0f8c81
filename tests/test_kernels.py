"""Block-sparse attention in the model (CPU: the gathered kernel) and FlexAttention against the fp32 reference (CUDA).

The kernel-level CPU checks (selection, reorder, gathered kernel vs reference, cond rule, sparsity 0 = dense) live in
nbs/09_kernels.ipynb; here: the model's forced 'bsa' path, gradient checkpointing, compiled blocks, and the GPU kernel.
"""
import math

import pytest
import torch
from fastcore.test import test_close as close_, test_eq as eq_

from longcat_nb.kernels import block_sparse_attention, block_sparse_reference, output_and_grads
from longcat_nb.model import TINY_DIT_CONFIG, LongCatVideoTransformer3DModel

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (FlexAttention has no CPU backward)")


def tiny(seed=0, device="cpu"):
    torch.manual_seed(seed)
    model = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG)
    for p in model.parameters(): p.data.normal_(0, 0.2)
    return model.to(device)


def inputs(device="cpu", T=4):
    "Latents whose token grid (T, 4, 8) is two 4×4×4 chunks per 4 frames."
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, T, 8, 16, generator=g).to(device),
                timestep=torch.tensor([500.0]).to(device),
                encoder_hidden_states=torch.randn(1, 1, 8, 32, generator=g).to(device))


def run(model, backend, **bsa):
    model.set_attention_backend(backend, **bsa)
    return model(**inputs(next(model.parameters()).device)).sample


def test_model_bsa_sparsity0_is_dense_and_sparse_differs():
    model = tiny()
    with torch.no_grad():
        dense = run(model, "sdpa")
        close_(run(model, "bsa", sparsity=0.0), dense, eps=1e-5)
        assert (run(model, "bsa", sparsity=0.5) - dense).abs().max() > 1e-3, "keeping 1 of 2 chunks must change the output"


def test_model_bsa_cond_frames_ignore_noise_frames():
    model, inp = tiny(), inputs(T=8)
    model.set_attention_backend("bsa", sparsity=0.5)
    other = inp["hidden_states"].clone()
    other[:, :, 1:] = torch.randn_like(other[:, :, 1:])
    t = torch.tensor([[0.0] + [500.0] * 7])
    with torch.no_grad():
        base = model(**inp | dict(timestep=t, num_cond_latents=1)).sample
        moved = model(**inp | dict(hidden_states=other, timestep=t, num_cond_latents=1)).sample
    close_(moved[:, :, :1], base[:, :, :1], eps=1e-5)


def test_model_bsa_non_divisible_grid_falls_back_with_message(capsys):
    model = tiny()
    inp = inputs() | dict(hidden_states=torch.randn(1, 16, 3, 8, 16))       # T = 3 frames: no whole chunks
    model.set_attention_backend("bsa", sparsity=0.5)
    with torch.no_grad(): out = model(**inp).sample
    model.set_attention_backend("sdpa")
    with torch.no_grad(): close_(out, model(**inp).sample, eps=1e-6)
    assert "dense sdpa for token grid 3×4×8" in capsys.readouterr().out


def test_model_bsa_gradient_checkpointing_same_grads():
    grads = []
    for ckpt in (False, True):
        model = tiny()
        model.set_attention_backend("bsa", sparsity=0.5)
        if ckpt: model.enable_gradient_checkpointing()
        model.blocks[0].attn.qkv.weight.requires_grad_(True)
        model(**inputs()).sample.square().mean().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    close_(grads[1], grads[0], eps=1e-5)


def test_model_bsa_compiled_blocks_cpu():
    "compile_blocks (aot_eager: dynamo + autograd tracing, no C++ build) runs the sparse path like eager."
    model = tiny()
    model.set_attention_backend("bsa", sparsity=0.5)
    with torch.no_grad(): eager = model(**inputs()).sample
    torch._dynamo.reset()
    model.compile_blocks(backend="aot_eager")
    with torch.no_grad(): close_(model(**inputs()).sample, eager, eps=1e-5)


@cuda
@pytest.mark.parametrize("sparsity,cdf,num_cond", [(0.9375, None, 0), (None, 0.9, 0), (0.9375, 0.5, 0), (0.9375, None, 512)])
def test_flex_matches_fp32_reference_bf16(sparsity, cdf, num_cond):
    "32 heads × 128, bf16 FlexAttention path vs the fp32 dense-under-mask reference: output and dq, dk, dv within 1e-2."
    grid = (8, 16, 32)                                                         # 4,096 tokens, 64 chunks
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 32, math.prod(grid), 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    got = output_and_grads(lambda q, k, v: block_sparse_attention(q, k, v, grid, sparsity, cdf, num_cond=num_cond), q, k, v)
    ref = output_and_grads(lambda q, k, v: block_sparse_reference(q, k, v, grid, sparsity, cdf, num_cond=num_cond),
                           q.float(), k.float(), v.float())
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        err = ((a - b).norm() / b.norm()).item()
        print(f"flex vs reference sparsity={sparsity} cdf={cdf} num_cond={num_cond} {name}: rel {err:.2e}")
        assert err < 1e-2, (name, err)


@cuda
def test_model_bsa_cuda_compiled_checkpointed_matches_eager():
    "Tiny model on CUDA, forced bsa (FlexAttention): compiled blocks + gradient checkpointing give eager's grads."
    grads = []
    for compiled in (False, True):
        model = tiny(device="cuda")
        model.set_attention_backend("bsa", sparsity=0.5)
        model.enable_gradient_checkpointing()
        if compiled: model.compile_blocks()
        model.blocks[0].attn.qkv.weight.requires_grad_(True)
        model(**inputs("cuda")).sample.square().mean().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    close_(grads[1], grads[0], eps=2e-3)
