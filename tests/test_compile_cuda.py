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
