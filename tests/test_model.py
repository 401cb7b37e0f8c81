"""An independent reference for the LongCat-Video forward pass.

`reference_forward` recomputes the whole network from the state dict alone, writing every convention of
SPEC §2 out by hand (einsum, explicit softmax, complex-number RoPE, a dense N×N conditioning mask), and the
model must match it. The per-convention tests live beside their code in nbs/03_model.ipynb.
"""
import json, math, subprocess, sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fastcore.test import test_close as close_, test_eq as eq_
from peft import LoraConfig

from longcat_nb.model import TINY_DIT_CONFIG, LongCatVideoTransformer3DModel

ROOT = Path(__file__).resolve().parents[1]


def random_tiny(seed=0, **overrides):
    "TINY_DIT_CONFIG model with every weight random, so biases and norm weights matter."
    torch.manual_seed(seed)
    model = LongCatVideoTransformer3DModel(**(TINY_DIT_CONFIG | overrides))
    for p in model.parameters(): p.data.normal_(0, 0.2)
    return model.eval()


def layer_norm(z, weight=None, bias=None):
    z = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-6)
    return z if weight is None else z * weight + bias


def rms_norm(z, weight): return z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def linear(sd, name, z): return z @ sd[f"{name}.weight"].T + sd.get(f"{name}.bias", 0)


def rope_complex(grid, d):
    "exp(i·angle) [N, d/2]: pair j = dims (2j, 2j+1); t/h/w slices 44/42/42-style; raster positions."
    T, H, W = grid
    dt = d - 4 * (d // 6)
    dims = [dt, (d - dt) // 2, (d - dt) // 2]
    pos = torch.tensor([(t, h, w) for t in range(T) for h in range(H) for w in range(W)], dtype=torch.float32)
    angles = [pos[:, a:a + 1] * 10000.0 ** (-torch.arange(0, n, 2).float() / n) for a, n in enumerate(dims)]
    return torch.polar(torch.ones(len(pos), d // 2), torch.cat(angles, -1))


def rotate(z, rot): return torch.view_as_real(torch.view_as_complex(z.unflatten(-1, (-1, 2)).contiguous()) * rot).flatten(-2)


def softmax_attention(q, k, v, allowed=None):
    "q [B, Nq, h, d], k/v [B, Nk, h, d], allowed broadcastable to [B, h, Nq, Nk]."
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if allowed is not None: s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)


def reference_forward(model, x, timestep, text, mask, num_cond_latents=0):
    "The LongCat-Video forward pass in fp32 from `model`'s state dict alone: [B, 16, T, H, W] → [B, 16, T, H, W]."
    sd = {k: v.float() for k, v in model.state_dict().items()}
    cfg = model.config
    B, Cin, T, H, W = x.shape
    Hp, Wp, C, heads = H // 2, W // 2, cfg.hidden_size, cfg.num_heads
    d = C // heads
    N = T * Hp * Wp
    # patchify: token (t, h, w) sees pixels (2h + p, 2w + q) of frame t
    patches = x.view(B, Cin, T, Hp, 2, Wp, 2)
    tok = torch.einsum("bcthpwq,ocpq->bthwo", patches, sd["x_embedder.proj.weight"][:, :, 0])
    tok = (tok + sd["x_embedder.proj.bias"]).reshape(B, N, C)
    # per-frame timestep embedding, cos first
    t = timestep[:, None].expand(B, T) if timestep.ndim == 1 else timestep
    freqs = torch.tensor([math.exp(-math.log(10000) * i / 128) for i in range(128)])
    sinus = torch.cat([torch.cos(t[..., None] * freqs), torch.sin(t[..., None] * freqs)], -1)
    temb = linear(sd, "t_embedder.mlp.2", F.silu(linear(sd, "t_embedder.mlp.0", sinus)))   # [B, T, Ct]
    # text
    y = linear(sd, "y_embedder.y_proj.2", F.gelu(linear(sd, "y_embedder.y_proj.0", text), approximate="tanh"))
    key_allowed = None
    if cfg.text_tokens_zero_pad: y = y * mask[..., None]
    else: key_allowed = mask.bool()[:, None, None, :]
    rot = rope_complex((T, Hp, Wp), d)
    frame = torch.arange(N) // (Hp * Wp)
    nc = num_cond_latents * Hp * Wp
    is_cond = torch.arange(N) < nc
    self_allowed = ~(is_cond[:, None] & ~is_cond[None, :])          # cond queries see only cond keys

    def per_token(m): return m[:, frame]                              # [B, T, C] → [B, N, C]

    for i in range(cfg.depth):
        p = f"blocks.{i}."
        mods = linear(sd, p + "adaLN_modulation.1", F.silu(temb)).chunk(6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = map(per_token, mods)
        h = layer_norm(tok) * (1 + scale_msa) + shift_msa
        q, k, v = linear(sd, p + "attn.qkv", h).view(B, N, 3, heads, d).unbind(2)
        q = rotate(rms_norm(q, sd[p + "attn.q_norm.weight"]), rot[:, None])
        k = rotate(rms_norm(k, sd[p + "attn.k_norm.weight"]), rot[:, None])
        tok = tok + gate_msa * linear(sd, p + "attn.proj", softmax_attention(q, k, v, self_allowed).reshape(B, N, C))
        h = layer_norm(tok, sd[p + "pre_crs_attn_norm.weight"], sd[p + "pre_crs_attn_norm.bias"])
        q = rms_norm(linear(sd, p + "cross_attn.q_linear", h).view(B, N, heads, d), sd[p + "cross_attn.q_norm.weight"])
        kv = linear(sd, p + "cross_attn.kv_linear", y)
        k = rms_norm(kv[..., :C].unflatten(-1, (heads, d)), sd[p + "cross_attn.k_norm.weight"])
        v = kv[..., C:].unflatten(-1, (heads, d))
        cross = linear(sd, p + "cross_attn.proj", softmax_attention(q, k, v, key_allowed).reshape(B, N, C))
        tok = tok + cross * (~is_cond)[None, :, None]
        h = layer_norm(tok) * (1 + scale_mlp) + shift_mlp
        ffn = linear(sd, p + "ffn.w2", F.silu(linear(sd, p + "ffn.w1", h)) * linear(sd, p + "ffn.w3", h))
        tok = tok + gate_mlp * ffn
    shift, scale = map(per_token, linear(sd, "final_layer.adaLN_modulation.1", F.silu(temb)).chunk(2, -1))
    out = linear(sd, "final_layer.linear", layer_norm(tok) * (1 + scale) + shift)        # [B, N, 2·2·C_out]
    out = out.view(B, T, Hp, Wp, 2, 2, cfg.out_channels)                                 # channel fastest
    return torch.einsum("bthwpqc->bcthpwq", out).reshape(B, cfg.out_channels, T, H, W)


def inputs(seed=0, B=2, T=3, L=6):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L)
    mask[0, 2:] = 0
    mask[1, 4:] = 0
    return (torch.randn(B, 16, T, 4, 6, generator=g), torch.tensor([250.0, 800.0])[:B],
            torch.randn(B, L, 32, generator=g), mask)


@pytest.mark.parametrize("zero_pad,num_cond", [(True, 0), (True, 1), (False, 0), (False, 2)])
def test_forward_matches_independent_reference(zero_pad, num_cond):
    model = random_tiny(text_tokens_zero_pad=zero_pad)
    x, t, text, mask = inputs()
    if num_cond: t = torch.tensor([[0.0] * num_cond + [600.0] * (3 - num_cond), [0.0] * num_cond + [96.0] * (3 - num_cond)])
    with torch.no_grad():
        out = model(x, t, text, mask, num_cond_latents=num_cond).sample
        ref = reference_forward(model, x, t, text, mask, num_cond)
    close_(out, ref, eps=1e-3)


def test_bf16_timestep_rounds_like_reference():
    "bf16 weights: the timestep is rounded to bf16 before embedding (513 → 512), as in the reference."
    model = random_tiny().to(torch.bfloat16)
    x, _, text, mask = inputs()
    with torch.no_grad():
        a = model(x, torch.tensor([513.0, 513.0]), text, mask).sample
        b = model(x, torch.tensor([512.0, 512.0]), text, mask).sample
    eq_(a, b)


def test_lora_on_fp32_layers():
    "The fp32 adaLN / final layers stay LoRA-targetable (the refinement LoRA adapts them) and keep fp32 outputs."
    model = random_tiny().to(torch.bfloat16).requires_grad_(False)
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["adaLN_modulation.1", "final_layer.linear"],
                                 init_lora_weights="gaussian"))
    eq_(model.blocks[0].adaLN_modulation[1](torch.randn(1, 32)).dtype, torch.float32)
    x, t, text, mask = inputs()
    out = model(x, t, text, mask).sample
    out.square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_bad_inputs_say_what_to_do():
    model = random_tiny()
    x, t, text, mask = inputs()
    with pytest.raises(ValueError, match="multiples of 16"): model(x[..., :3], t, text, mask)
    with pytest.raises(ValueError, match="one per latent frame"): model(x, t[:, None].expand(2, 2), text, mask)
    with pytest.raises(ValueError, match="num_cond_latents"): model(x, t, text, mask, num_cond_latents=3)
    with pytest.raises(ValueError, match="encoder_attention_mask"): model(x, t, text, mask[:, :4])


def test_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_model.py"), "--tiny", "--json", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=300)
    results = json.loads(out.read_text())
    for part in ("forward", "lora_step", "cfg_batch2_forward"):
        assert "error" not in results[part], results[part]
        assert results[part]["median_s"] > 0


def cache_bytes(cache) -> int:
    "Bytes of the distinct storages that a `CondKVCache`'s tensors keep alive (its k, v and velocity)."
    tensors = [t for slot in cache.blocks for t in (slot.k, slot.v)] + [cache.velocity]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


@pytest.mark.parametrize("videos", [1, 2])
def test_cond_cache_keeps_2C_a_token(videos):
    """bf16 weights under the sampler's bf16 autocast: the conditioning cache keeps 2C bf16 values a token, a block and
    a video (k and v in storages of their own, not views of the fused qkv output, which is 3C), as `cond_cache_bytes`
    says; a guidance batch of 2·videos uses it without growing it, and the cached step equals the uncached one."""
    from longcat_nb.model import cond_cache_bytes
    model = random_tiny().to(torch.bfloat16)
    x, _, text, mask = (a[:videos] for a in inputs(B=2, T=4))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        cache = model.cache_cond_kv(x[:, :, :2].bfloat16())
        held = cache_bytes(cache)
        tokens, C, depth = 2 * 2 * 3, model.config.hidden_size, model.config.depth
        eq_(held, cond_cache_bytes(tokens, depth, C, batch=videos, dtype_bytes=2))
        eq_(held - cache.velocity.nbytes, 2 * C * 2 * tokens * depth * videos)
        pair, t = torch.cat([x, x]), torch.tensor([0.0, 0, 400, 400]).expand(2 * videos, -1)
        pair_text, pair_mask = torch.cat([text, text]), torch.cat([mask, mask])
        cached = model(pair[:, :, 2:], t[:, 2:], pair_text, pair_mask, kv_cache=cache).sample
        eq_(cache_bytes(cache), held)                                   # the guidance batch kept nothing more
        uncached = model(pair, t, pair_text, pair_mask, num_cond_latents=2).sample[:, :, 2:]
    assert ((cached - uncached).norm() / uncached.norm()).item() < 2e-2, "bf16: within bf16 noise of the uncached step"
