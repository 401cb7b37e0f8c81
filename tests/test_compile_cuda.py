"compile_transformer on a GPU: compiled blocks train like eager ones (bf16 tolerance). Skipped without CUDA."
import pytest
import torch

from longcat_nb.config import load_config
from longcat_nb.tiny import make_example_dataset, tiny_checkpoint
from longcat_nb.training import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.compile's GPU code path)")


def _losses(tmp_path, name, compile_transformer):
    cfg = load_config(make_example_dataset(tmp_path / name, checkpoint=tiny_checkpoint(), max_train_steps=8,
                                           validation_steps=8, output_dir=tmp_path / name / "out",
                                           learning_rate=3e-3, compile_transformer=compile_transformer))
    result = train(cfg)
    assert result.videos, "validation (the compiled model in no-grad mode) wrote no video"
    return torch.tensor(result.losses)


def test_compiled_training_matches_eager(tmp_path):
    eager, compiled = _losses(tmp_path, "eager", False), _losses(tmp_path, "compiled", True)
    assert len(eager) == len(compiled) == 8
    assert torch.allclose(compiled, eager, rtol=3e-2, atol=1e-3), (eager, compiled)


def _audit():
    "benchmarks/audit_step.py: the trainer's step on a small LoRA model (hidden 256, 2 blocks, 560 tokens)."
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "audit_step.py"
    spec = importlib.util.spec_from_file_location("audit_step", path)
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    return audit


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _fused_step(A, fused: bool, frames: int = 4, low_memory: bool = False, qk_kernel: bool = False):
    """Loss and LoRA gradients of the trainer's CUDA step, its elementwise work fused (Inductor) or eager, on `frames`
    latent frames; `low_memory`: one block swapped and activation offload (`offload.place_model`); `qk_kernel`: the
    q/k norm + RoPE as the Triton kernel (`set_qk_kernel`, the `fused_qk_norm_rope` default on CUDA)."""
    from longcat_nb.offload import place_model
    model = A.build()
    if low_memory: place_model(model, "cuda", blocks_to_swap=1, activation_offload=True, max_tokens=560)
    else: model.cuda()
    model.set_fused_elementwise(fused)
    model.set_qk_kernel(qk_kernel)
    b, sigma, drop, noise, empty = A.make_batch(device="cuda")
    b = b | dict(latents=b["latents"][:, :, :frames])
    torch.manual_seed(123)
    return A.trainer_step(model, (b, sigma, drop, noise[:, :, :frames], empty))


def _like_eager(got, eager, what):
    "`got`'s loss within 1e-3 and each LoRA gradient within 2e-2 (of its norm) of `eager`'s: bf16 rounding."
    assert abs(got[0] - eager[0]) <= 1e-3 * abs(eager[0]), (what, got[0], eager[0])
    for n, g in eager[1].items(): assert _rel(got[1][n], g) <= 2e-2, (what, n)


def _no_recompile_after_two_counts(A, **kw):
    "A fused step on a third token count after a second one compiles nothing."
    _fused_step(A, True, frames=3, **kw)
    with torch._dynamo.config.patch(error_on_recompile=True): _fused_step(A, True, frames=2, **kw)


def test_fused_elementwise_matches_eager_on_cuda():
    """`set_fused_elementwise(True)` (Inductor's Triton kernels) under the trainer's CUDA bf16 autocast: eager's loss
    and LoRA gradients within bf16 rounding (loss 1e-3, each gradient 2e-2 of its norm), resident and in the low-memory
    plan's runtime (a swapped block, activation offload: the checkpointed recompute through `BlockRunner`); a new token
    count after two compiles nothing."""
    A = _audit()
    eager = _fused_step(A, False)
    for low_memory in (False, True):
        _like_eager(_fused_step(A, True, low_memory=low_memory), eager, low_memory)
    _no_recompile_after_two_counts(A)


def test_qk_kernel_matches_eager_on_cuda():
    """`fused_qk_norm_rope` on a CUDA run: the trainer's step with the Triton q/k norm + RoPE gives eager's loss and
    LoRA gradients within bf16 rounding, alone and with the rest of the elementwise work fused by inductor; a new token
    count recompiles nothing."""
    A = _audit()
    eager = _fused_step(A, False)
    for fused in (False, True):
        _like_eager(_fused_step(A, fused, qk_kernel=True), eager, fused)
    _no_recompile_after_two_counts(A, qk_kernel=True)
