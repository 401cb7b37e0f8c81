"""Recompile hygiene of `compile_transformer` (issue 22): the checkpointed blocks compile with dynamic shapes, so after
one graph per path (block 0 or the others; with or without conditioning frames) no bucket compiles again, and nothing
compiles after the first in-training validation. CPU: the `aot_eager` backend (dynamo and autograd's tracing, no code
generation); on a GPU the same tests run Inductor.

Token counts and conditioning lengths here avoid the tiny model's fixed sizes (hidden 64, head 32, half-head 16, the
timestep embedding 32, qkv 192, ...): dynamo's "duck sizing" gives inputs of equal size one symbol, so a token count
equal to a weight's size would be specialised with it (at full size that could be a bucket of exactly 4,096 tokens:
one more graph, not a wrong one)."""
import importlib.util, json, os, statistics
from pathlib import Path

import pytest
import torch
from fastcore.test import test_eq as eq_
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._dynamo.utils import counters

from longcat_nb import training
from longcat_nb.caching import build_cache
from longcat_nb.config import load_config
from longcat_nb.lora import add_lora
from longcat_nb.model import TINY_DIT_CONFIG, LongCatBlock, LongCatVideoTransformer3DModel, rope_3d
from longcat_nb.tiny import make_example_dataset, tiny_checkpoint

CUDA = torch.cuda.is_available()
BACKEND = "inductor" if CUDA else "aot_eager"
slow = pytest.mark.skipif(not os.environ.get("LONGCAT_SLOW"), reason="trains with compiled blocks (~1 min on 2 CPU cores): LONGCAT_SLOW=1")


def graphs(fn) -> int:
    "How many graphs dynamo holds for the code of `fn` (a function, or a code object)."
    return len(_debug_get_cache_entry_list(getattr(fn, "__code__", fn)))


def checkpointed_code():
    "The code object `compiled_checkpointing` compiles (one for every model and setting: its graphs count together)."
    return next(c for c in training.compiled_checkpointing.__code__.co_consts if getattr(c, "co_name", "") == "checkpointed_block")


def lora_model(seed: int = 0):
    "The tiny model with random weights, frozen, and a rank-4 LoRA whose B factors are random too (so it acts)."
    torch.manual_seed(seed)
    m = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG)
    for p in m.parameters(): p.data.normal_(0, 0.2)
    m.requires_grad_(False)
    add_lora(m, 4, None, 0.0, None)
    for n, p in m.named_parameters():
        if "lora_B" in n: torch.nn.init.normal_(p, std=0.02)
    return m


def lora_block(seed: int = 0):
    "Block 1 of `lora_model` (its input needs a gradient, as every block's but the first does in training)."
    return lora_model(seed).blocks[1].train()


def block_grads(fn, block, grid, num_cond: int):
    "x's and the LoRA's gradients of `fn(block, x, y, t, rope, None, num_cond, 'sdpa', None)` for token grid (T, H, W)."
    T, H, W = grid
    g = torch.Generator().manual_seed(T * H * W)
    C = TINY_DIT_CONFIG["hidden_size"]
    x = torch.randn(1, T * H * W, C, generator=g).requires_grad_()
    y, t = torch.randn(1, 6, C, generator=g), torch.randn(1, T, TINY_DIT_CONFIG["adaln_tembed_dim"], generator=g)
    rope = rope_3d(grid, C // TINY_DIT_CONFIG["num_heads"])
    fn(block, x, y, t, rope, None, num_cond, "sdpa", None).square().mean().backward()
    grads = [x.grad] + [p.grad for p in block.parameters() if p.requires_grad]
    block.zero_grad(set_to_none=True)
    return grads


def test_checkpointed_block_compiles_once_per_path():
    """`compiled_checkpointing` keeping attention (CUDA's `auto`; the CPU's recompute path is the slow test's): a
    text-to-video grid and an image-to-video one compile a graph each; then other token counts, frame counts and
    conditioning lengths of both compile nothing (`error_on_recompile`), without a graph break, and every call's
    gradients are the eager checkpoint's."""
    from longcat_nb.model import checkpoint_keeping_attention as eager
    torch._dynamo.reset(); counters.clear()
    fn, block = training.compiled_checkpointing(True, BACKEND), lora_block()
    calls = [((3, 4, 4), 0), ((3, 4, 12), 48),     # warm-up: 48 tokens T2V, 144 tokens I2V (48 conditioning)
             ((5, 4, 6), 0), ((4, 6, 10), 60)]      # then 120 tokens over 5 frames, 240 over 4 with 60 conditioning
    for i, (grid, cond) in enumerate(calls):
        with torch._dynamo.config.patch(error_on_recompile=i >= 2):
            got = block_grads(fn, block, grid, cond)
        want = block_grads(lambda b, *a: eager(b.forward, *a), block, grid, cond)
        for a, b in zip(got, want): assert (a - b).norm() <= 1e-5 * b.norm(), (grid, cond)
    eq_(graphs(checkpointed_code()), 2)
    eq_(dict(counters["graph_break"]), {})
    torch._dynamo.reset()


def test_checkpointed_block_keeps_block_sparse_attention():
    """Block-sparse attention (the op's gathered kernel, a grid padded to whole chunks) in a compiled checkpoint keeping
    attention: one graph without a break, the eager checkpoint's gradients, and the sparse step's forward runs once
    per call — kept, not run again in the backward."""
    from longcat_nb import kernels
    from longcat_nb.model import checkpoint_keeping_attention as eager
    grid = (3, 4, 6)                                                 # 72 tokens, padded to 4×4×8
    sparse = kernels.BlockSparse(grid, 0.5, kernel="gathered")
    means, fwd, bwd = kernels._STEPS["gathered"]
    runs = []
    torch._dynamo.reset(); counters.clear()
    fn, block = training.compiled_checkpointing(True, BACKEND), lora_block()
    try:
        kernels._STEPS["gathered"] = (means, lambda *a: runs.append(1) or fwd(*a), bwd)
        got = block_grads(lambda b, x, y, t, rope, m, c, _, slot: fn(b, x, y, t, rope, m, c, sparse, slot),
                          block, grid, 0)
        eq_(len(runs), 1)
        want = block_grads(lambda b, x, y, t, rope, m, c, _, slot: eager(b.forward, x, y, t, rope, m, c, sparse, slot),
                           block, grid, 0)
        eq_(len(runs), 2)
    finally:
        kernels._STEPS["gathered"] = (means, fwd, bwd)
    for a, b in zip(got, want): assert (a - b).norm() <= 1e-5 * b.norm()
    eq_(graphs(checkpointed_code()), 1)
    eq_(dict(counters["graph_break"]), {})
    torch._dynamo.reset()


def two_size_dataset(root: Path) -> Path:
    """Text- and image-to-video clips at 192×64 (2 each: 144 tokens, 48 conditioning) and 192×128 (1 each: 288 tokens,
    96 conditioning), cached; returns config.json."""
    small = make_example_dataset(root / "small", n_clips=2, size=(192, 64), checkpoint=tiny_checkpoint())
    large = make_example_dataset(root / "large", n_clips=1, size=(192, 128), checkpoint=tiny_checkpoint())
    datasets = json.loads((root / "small" / "multidatabackend.json").read_text())
    for d in json.loads((root / "large" / "multidatabackend.json").read_text()):
        d["id"] = "large-" + d["id"]
        if d.get("conditioning_data"): d["conditioning_data"] = ["large-" + c for c in d["conditioning_data"]]
        datasets.append(d)
    (root / "small" / "multidatabackend.json").write_text(json.dumps(datasets, indent=2))
    build_cache(load_config(small), progress=False)
    return small


def small_first(samples, *a, **k):
    "`epoch_batches`, reordered: the 192×64 batches first, text- and image-to-video alternating, then the 192×128 ones."
    keys = real_epoch_batches(samples, *a, **k)
    s = lambda key: samples[key.indices[0]]
    t2v, i2v = ([k for k in keys if s(k).bucket.height == 64 and s(k).is_i2v == c] for c in (False, True))
    return [k for pair in zip(t2v, i2v) for k in pair] + [k for k in keys if s(k).bucket.height != 64]

real_epoch_batches = training.epoch_batches


@slow
def test_training_compiles_nothing_after_the_first_validation(tmp_path, monkeypatch):
    """`train` with compiled blocks on two buckets (text- and image-to-video at 144 tokens) before its first
    validation (after step 4), then `error_on_recompile`: a new bucket of each kind (288 tokens) and the final
    validation compile nothing. The checkpointed blocks hold 4 graphs (block 0 or the others × with or without
    conditioning), the blocks' own compiled call (validation) at most 2; a step after the validation takes no longer
    than the steps before it; the losses are the eager run's."""
    monkeypatch.setenv("LONGCAT_COMPILE_BACKEND", BACKEND)
    monkeypatch.setattr(training, "LOGGING_STEPS", 1)                # every step read: each one's own seconds
    monkeypatch.setattr(training, "epoch_batches", small_first)
    real_validate = training._Validator.__call__
    def validate_then_strict(self, *a, **k):
        out = real_validate(self, *a, **k)
        torch._dynamo.config.error_on_recompile = True
        return out
    monkeypatch.setattr(training._Validator, "__call__", validate_then_strict)
    path = two_size_dataset(tmp_path)

    def run(name, compiled):
        cfg = load_config(path)
        cfg.output_dir, cfg.report_to, cfg.compile_transformer = tmp_path / name, "none", compiled
        cfg.max_train_steps, cfg.validation_steps, cfg.checkpointing_steps, cfg.validation_num_inference_steps = 6, 4, 100, 2
        return training.train(cfg)

    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=False):
        compiled = run("compiled", True)
    eq_(len(compiled.videos), 2)
    eq_(graphs(checkpointed_code()), 4)
    assert 1 <= graphs(LongCatBlock.forward) <= 2, graphs(LongCatBlock.forward)
    spec = importlib.util.spec_from_file_location("step_timeline", Path(__file__).parents[1] / "benchmarks" / "step_timeline.py")
    timeline = importlib.util.module_from_spec(spec); spec.loader.exec_module(timeline)
    around = timeline.timeline(tmp_path / "compiled")["around_validation"][0]
    eq_(around["validation_step"], 4)
    before, after = statistics.median(around["before_s"]), statistics.median(around["after_s"])
    assert after <= 3 * before + 0.5, around                          # a recompile costs seconds even for this model
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=False):
        eager = run("eager", False)
    tol = 3e-2 if CUDA else 1e-5
    assert torch.allclose(torch.tensor(compiled.losses), torch.tensor(eager.losses), rtol=tol), (compiled.losses, eager.losses)


@pytest.mark.skipif(not CUDA, reason="FlexAttention compiles for CUDA (block-sparse attention's flex kernel)")
def test_flex_attention_one_graph_for_every_token_count():
    """`kernels.flex_block_attention` over ten token counts (64-token tiles, a random half kept) compiles at most two
    graphs of FlexAttention: a static graph per count would reach dynamo's limit (8) and the eager fallback, which
    materialises the whole score matrix (at 37,440 tokens, 32 heads: 180 GB)."""
    from torch.nn.attention.flex_attention import flex_attention
    from longcat_nb import kernels
    torch._dynamo.reset()
    g = torch.Generator(device="cuda").manual_seed(0)
    for n in range(4, 14):
        q, k, v = (torch.randn(1, 2, 64 * n, 128, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
                   for _ in range(3))
        keep = (torch.rand(1, 2, n, n, device="cuda", generator=g) < 0.5) | torch.eye(n, dtype=torch.bool, device="cuda")
        kernels.flex_block_attention(q, k, v, kernels.Kept.from_mask(keep)).float().square().mean().backward()
    assert graphs(flex_attention) <= 2, graphs(flex_attention)
    torch._dynamo.reset()
