"""No idle GPU between steps (issue 22): the trainer reads its step values from the device once per logging interval
(and at checkpoints, validation, stops and the first step), the prefetched micro-batches keep a stopped and resumed run
bit-identical, and a non-finite step found at a later read still stops before any checkpoint after it."""
import sys, threading
from pathlib import Path

import pytest
import torch
from fastcore.test import test_eq as eq_
from safetensors.torch import load_file

import longcat_nb
import longcat_nb.training as training
from longcat_nb.training import TrainingError, list_checkpoints, read_progress, train
from test_training import StopAfter, config

# what would wait for the GPU if the tensor lived there: reading it, converting it, formatting it
READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__format__")
STEP_CODE = [str(Path(longcat_nb.__file__).parent / f) for f in ("training.py", "model.py", "kernels.py")]


@pytest.fixture
def tensor_reads(monkeypatch):
    """Where the training step's code (training.py, model.py, kernels.py) reads a tensor's value on the host: a list of
    (method, file:line) that grows while training runs; checkpoints and the LoRA export (which must read) are left out."""
    seen, paused = [], [0]
    for name in READS:
        real = getattr(torch.Tensor, name)
        def counting(self, *a, _real=real, _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename
            if not paused[0] and caller in STEP_CODE: seen.append((_name, f"{Path(caller).name}:{sys._getframe(1).f_lineno}"))
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counting)
    for fn in ("_save_checkpoint", "_export_loras"):
        real = getattr(training, fn)
        def pausing(*a, _real=real, **k):
            paused[0] += 1
            try: return _real(*a, **k)
            finally: paused[0] -= 1
        monkeypatch.setattr(training, fn, pausing)
    return seen


def test_one_host_read_per_logging_interval(example, tmp_path, monkeypatch, tensor_reads):
    """25 steps, LOGGING_STEPS 10, a checkpoint only at the end: the step code reads tensors 4 times — after step 1 (its
    time is the first step's), 11, 21 and 25 — each one `tolist` of all unread steps; every step still gets its
    progress line, with the loss the run returns, and the interval's seconds a step."""
    reads = []
    real = training._read_steps
    def spy(run, *a, **k):
        if run.unread: reads.append(run.state.step)
        return real(run, *a, **k)
    monkeypatch.setattr(training, "_read_steps", spy)
    r = train(config(example, tmp_path, max_train_steps=25, checkpointing_steps=100, validation_steps=0,
                     caption_dropout_probability=0.5))
    eq_(reads, [1, 11, 21, 25])
    eq_(tensor_reads, [("tolist", tensor_reads[0][1])] * 4)
    steps = [e for e in read_progress(tmp_path) if e["event"] == "step"]
    eq_([e["step"] for e in steps], list(range(1, 26)))
    eq_([e["loss"] for e in steps], r.losses)
    eq_(len(r.grad_norms), 25)
    assert all(e["s_per_step"] > 0 for e in steps)
    eq_(len({e["s_per_step"] for e in steps[11:21]}), 1)          # one interval, one average


def test_stop_with_unread_steps_then_resume_is_bit_identical(example, tmp_path, monkeypatch):
    """Micro-batches read and noise drawn two ahead on the prefetch thread, steps read every 3: a run stopped after step
    5 (steps 2–5 unread until the stop reads them) and resumed gives the uninterrupted run's losses, gradient norms and
    LoRA bit for bit, across epoch boundaries and accumulation; no prefetch thread outlives a run."""
    monkeypatch.setattr(training, "LOGGING_STEPS", 3)
    kw = dict(max_train_steps=7, checkpointing_steps=100, gradient_accumulation_steps=2, caption_dropout_probability=0.5)
    full = train(config(example, tmp_path / "full", **kw))
    cut = train(config(example, tmp_path / "cut", **kw), stop=StopAfter(5))
    assert cut.stopped and cut.steps == 5
    eq_(cut.losses, full.losses[:5])
    resumed = train(config(example, tmp_path / "cut", resume_from_checkpoint="latest", **kw))
    eq_(resumed.losses, full.losses)
    eq_(resumed.grad_norms, full.grad_norms)
    a, b = load_file(full.lora_paths[0]), load_file(resumed.lora_paths[0])
    for k in a: assert torch.equal(a[k], b[k]), k
    assert not [t for t in threading.enumerate() if t.name == "longcat_nb-prefetch"]


def test_non_finite_step_found_at_a_later_read(example, tmp_path, monkeypatch):
    """A NaN loss at step 5, read only at step 8 (LOGGING_STEPS 4, checkpoints every 4): the error names step 5 and
    checkpoint-4, exports that checkpoint's LoRA, and no checkpoint-8 (after the NaN) is written."""
    monkeypatch.setattr(training, "LOGGING_STEPS", 4)
    real, n = training.flow_matching_loss, [0]
    def nan_at_5(*a, **k):
        n[0] += 1
        loss = real(*a, **k)
        return loss * float("nan") if n[0] == 5 else loss
    monkeypatch.setattr(training, "flow_matching_loss", nan_at_5)
    with pytest.raises(TrainingError, match=r"step 5: loss = nan.*discarded.*checkpoint-4"):
        train(config(example, tmp_path, max_train_steps=10, checkpointing_steps=4))
    eq_([p.name for p in list_checkpoints(tmp_path)], ["checkpoint-4"])
    state, exported = load_file(tmp_path / "checkpoint-4" / "lora.safetensors"), load_file(tmp_path / "lora_peft.safetensors")
    for k in state: assert torch.equal(state[k], exported[k]), k
    eq_([e["step"] for e in read_progress(tmp_path) if e["event"] == "step"], [1, 2, 3, 4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a CUDA matter (torch.cuda.set_sync_debug_mode)")
def test_no_host_sync_between_reads_cuda(example, tmp_path, monkeypatch):
    """On a GPU, the steps between two reads synchronise with the host not once (CUDA's own sync detector: `.item()`,
    copies from pageable memory, ...): everything but `_read_steps` and the step after it run under "error"."""
    monkeypatch.setattr(training, "LOGGING_STEPS", 1000)
    real_step, real_read = training._optimizer_step, training._read_steps
    def strict_step(run, cfg, batches):
        if run.steps_read:                                    # past the first step: compiled, warmed up
            torch.cuda.set_sync_debug_mode("error")
        try: return real_step(run, cfg, batches)
        finally: torch.cuda.set_sync_debug_mode("default")
    monkeypatch.setattr(training, "_optimizer_step", strict_step)
    r = train(config(example, tmp_path, max_train_steps=6, checkpointing_steps=100, caption_dropout_probability=0.5))
    eq_(r.steps, 6)
