"""End-to-end training tests on the tiny checkpoint: resume reproduces the run, NaN stops it cleanly, a one-clip
run memorises, image-to-video frame 0 is outside the loss, batches never mix T2V/I2V, and a 2-process (gloo) DDP
run computes what one process computes on the same global batch."""
import json, math, os, subprocess, sys
from pathlib import Path

import pytest
import torch
from fastcore.test import test_eq as eq_, test_close as close_
from safetensors.torch import load_file

import longcat_nb.training as training
from longcat_nb.config import load_config
from longcat_nb.tiny import make_example_dataset, tiny_checkpoint
from longcat_nb.training import TrainingError, list_checkpoints, train


def config(path, out, **kw):
    "The example config, validation and TensorBoard off, writing to `out`, with `kw` overrides."
    cfg = load_config(path)
    cfg.output_dir, cfg.validation_prompt, cfg.report_to = Path(out), None, "none"
    for k, v in kw.items(): setattr(cfg, k, v)
    return cfg


def interrupt_at(monkeypatch, call, exc):
    "Make the `call`-th flow_matching_loss call (1-based) raise `exc` (or return it when it is a tensor)."
    real, n = training.flow_matching_loss, [0]
    def patched(*a, **k):
        n[0] += 1
        loss = real(*a, **k)
        if n[0] != call: return loss
        if isinstance(exc, torch.Tensor): return loss * exc
        raise exc
    monkeypatch.setattr(training, "flow_matching_loss", patched)


def test_resume_reproduces_losses(example, tmp_path, monkeypatch):
    kw = dict(max_train_steps=6, checkpointing_steps=3, gradient_accumulation_steps=2, caption_dropout_probability=0.5)
    full = train(config(example, tmp_path / "full", **kw))
    eq_(len(full.losses), 6)
    interrupt_at(monkeypatch, 9, KeyboardInterrupt())          # step 5, 1st micro-batch: after checkpoint-3
    with pytest.raises(KeyboardInterrupt): train(config(example, tmp_path / "cut", **kw))
    eq_([p.name for p in list_checkpoints(tmp_path / "cut")], ["checkpoint-3"])
    monkeypatch.undo()
    resumed = train(config(example, tmp_path / "cut", resume_from_checkpoint="latest", **kw))
    eq_(resumed.losses, full.losses)                           # exactly: same data, noise, dropout, optimizer state
    eq_(resumed.grad_norms, full.grad_norms)
    a, b = load_file(full.lora_paths[0]), load_file(resumed.lora_paths[0])
    for k in a: assert torch.equal(a[k], b[k]), k


def test_nan_stops_with_last_checkpoint_intact(example, tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 3, torch.tensor(float("nan")))
    with pytest.raises(TrainingError, match=r"step 3: loss = nan.*checkpoint-2"):
        train(config(example, tmp_path, max_train_steps=4, checkpointing_steps=2))
    eq_([p.name for p in list_checkpoints(tmp_path)], ["checkpoint-2"])
    assert not list(tmp_path.glob(".checkpoint-*"))
    state = load_file(tmp_path / "checkpoint-2" / "lora.safetensors")
    assert state and all(torch.isfinite(v).all() for v in state.values())
    exported = load_file(tmp_path / "lora_peft.safetensors")          # the good checkpoint's LoRA is exported
    for k in state: assert torch.equal(state[k], exported[k]), k
    monkeypatch.undo()
    resumed = train(config(example, tmp_path, max_train_steps=4, checkpointing_steps=2, resume_from_checkpoint="latest"))
    eq_(resumed.steps, 4)


def test_memorises_one_clip(tmp_path, monkeypatch):
    "One clip, the same σ and noise every step (the memorisation set-up): the loss must fall well below its start."
    real = training.draw_step_noise
    monkeypatch.setattr(training, "draw_step_noise", lambda g, *a, **kw: real(torch.Generator().manual_seed(0), *a, **kw))
    path = make_example_dataset(tmp_path / "one", i2v=False, n_clips=1, checkpoint=tiny_checkpoint())
    cfg = config(path, tmp_path / "out", max_train_steps=40, learning_rate=1e-2, lora_rank=8,
                 caption_dropout_probability=0.0, checkpointing_steps=1000)
    r = train(cfg)
    assert cfg.compile_transformer is None                 # auto resolved on the run's copy: the caller's config stays
    assert r.losses[-1] < 0.6 * r.losses[0], r.losses
    assert sum(b < a for a, b in zip(r.losses, r.losses[1:])) >= 35, r.losses   # falls step after step


@pytest.mark.parametrize("k", [1, 2])      # 1: image-to-video (frame 0), 2: a continuation dataset's continuation_latents
def test_i2v_frame0_outside_the_loss(k):
    from longcat_nb.model import LongCatVideoTransformer3DModel, TINY_DIT_CONFIG
    torch.manual_seed(0)
    model = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG)
    g = torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(2, 16, 3, 4, 4, generator=g), "num_cond_latents": k,
             "text_emb": torch.randn(2, 512, 32, generator=g), "text_mask": torch.ones(2, 512, dtype=torch.long)}
    empty = (torch.zeros(512, 32), torch.zeros(512, dtype=torch.long))
    sigma, drop, noise = torch.tensor([0.3, 0.8]), torch.tensor([False, True]), torch.randn(2, 16, 3, 4, 4, generator=g)
    seen = {}
    def look(m, args, kwargs): seen.update(x=args[0].clone(), t=args[1].clone(), emb=args[2].clone())
    h = model.register_forward_pre_hook(look, with_kwargs=True)
    base = training.flow_matching_loss(model, batch, sigma, drop, noise, empty).detach()
    h.remove()
    eq_(seen["x"][:, :, :k], batch["latents"][:, :, :k])        # the first k frames go in clean ...
    eq_(seen["t"][:, :k], torch.zeros(2, k))                    # ... at timestep 0
    close_(seen["t"][:, k:], 1000 * sigma[:, None].expand(2, 3 - k))
    eq_(seen["emb"][1], empty[0]); eq_(seen["emb"][0], batch["text_emb"][0])   # caption dropout → the empty prompt
    def bump(m, args, kwargs, out): out.sample[:, :, :k] += 50.0
    h = model.register_forward_hook(bump, with_kwargs=True)
    eq_(training.flow_matching_loss(model, batch, sigma, drop, noise, empty).detach(), base)   # they do not count
    h.remove()
    def bump_next(m, args, kwargs, out): out.sample[:, :, k] += 1.0
    h = model.register_forward_hook(bump_next, with_kwargs=True)
    assert training.flow_matching_loss(model, batch, sigma, drop, noise, empty).detach() > base   # the next frame does
    h.remove()


def test_batches_never_mix_t2v_and_i2v(example):
    from longcat_nb.data import check_datasets
    samples = check_datasets(load_config(example)).samples
    for epoch in range(3):
        for key in training.epoch_batches(samples, 2, 42, epoch):
            eq_(len({samples[i].is_i2v for i in key.indices}), 1)
            eq_(len({samples[i].bucket for i in key.indices}), 1)


def test_ddp_two_processes_match_one(example, tmp_path):
    "Two gloo processes × 1 clip compute the loss, gradient and update one process computes with 2 clips."
    one = train(config(example, tmp_path / "one", max_train_steps=2, train_batch_size=2, caption_dropout_probability=0.5))
    d = json.loads(Path(example).read_text())
    d.update(output_dir=str(tmp_path / "two"), max_train_steps=2, train_batch_size=1, caption_dropout_probability=0.5,
             validation_prompt=None, report_to="none")
    cfg_path = tmp_path / "ddp.json"
    cfg_path.write_text(json.dumps(d))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "longcat_nb.training", "--config", str(cfg_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    state = next(s for f in (tmp_path / "two" / "checkpoint-2").glob("custom_checkpoint_*.pkl")
                 if "losses" in (s := torch.load(f, weights_only=False)))
    close_(torch.tensor(state["losses"]), torch.tensor(one.losses), eps=1e-5)
    close_(torch.tensor(state["grad_norms"]), torch.tensor(one.grad_norms), eps=1e-4)
    a, b = load_file(one.lora_paths[0]), load_file(tmp_path / "two" / "lora_peft.safetensors")
    for k in a: close_(b[k], a[k], eps=1e-5)


class StopAfter:
    "A stop request that turns on at the `k`-th check (checks come after each optimizer step)."
    def __init__(self, k): self.k, self.n = k, 0
    def is_set(self):
        self.n += 1
        return self.n >= self.k


def test_stop_then_resume_is_bit_identical(example, tmp_path):
    kw = dict(max_train_steps=5, checkpointing_steps=4, gradient_accumulation_steps=2, caption_dropout_probability=0.5)
    full = train(config(example, tmp_path / "full", **kw))
    cut = train(config(example, tmp_path / "cut", **kw), stop=StopAfter(2))
    assert cut.stopped and cut.steps == 2 and cut.lora_paths == []
    eq_([p.name for p in list_checkpoints(tmp_path / "cut")], ["checkpoint-2"])   # written for the stop
    eq_([e["event"] for e in training.read_progress(tmp_path / "cut")][-2:], ["checkpoint", "stopped"])
    resumed = train(config(example, tmp_path / "cut", resume_from_checkpoint="latest", **kw))
    assert not resumed.stopped
    eq_(resumed.losses, full.losses)
    eq_(resumed.grad_norms, full.grad_norms)
    a, b = load_file(full.lora_paths[0]), load_file(resumed.lora_paths[0])
    for k in a: assert torch.equal(a[k], b[k]), k


def test_stop_file_from_another_process(example, tmp_path, monkeypatch):
    "The STOP file stops the run after the step it appears in; it is removed when honoured; no second checkpoint."
    real = training._optimizer_step
    def step_then_request(run, cfg, batches):
        out = real(run, cfg, batches)
        if run.state.step == 2: training.request_stop(run.output_dir)
        return out
    monkeypatch.setattr(training, "_optimizer_step", step_then_request)
    r = train(config(example, tmp_path, max_train_steps=6, checkpointing_steps=2))
    assert r.stopped and r.steps == 2 and not (tmp_path / "STOP").exists()
    eq_([p.name for p in list_checkpoints(tmp_path)], ["checkpoint-2"])
    eq_([e["event"] for e in training.read_progress(tmp_path)].count("checkpoint"), 1)   # the step-2 checkpoint served


def test_error_event_before_the_exception(example, tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 2, RuntimeError("disk on fire"))
    with pytest.raises(RuntimeError, match="disk on fire"): train(config(example, tmp_path, max_train_steps=3))
    last = training.read_progress(tmp_path)[-1]
    eq_((last["event"], last["step"]), ("error", 1))
    assert "disk on fire" in last["message"]


def test_signals_request_a_stop_and_a_second_ctrl_c_aborts():
    import signal
    before = signal.getsignal(signal.SIGINT)
    with training.stop_on_signals() as ev:
        signal.raise_signal(signal.SIGTERM)                  # e.g. a job scheduler's stop: only asks
        assert ev.is_set()
        with pytest.raises(KeyboardInterrupt): signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before         # the handlers are put back


def test_ctrl_c_during_train_leaves_a_resumable_run(example, tmp_path, monkeypatch):
    "A SIGINT in the middle of step 2 (train installs the handler itself): the step finishes, a checkpoint is written."
    import signal
    real, n = training.flow_matching_loss, [0]
    def patched(*a, **k):
        n[0] += 1
        if n[0] == 2: signal.raise_signal(signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(training, "flow_matching_loss", patched)
    r = train(config(example, tmp_path, max_train_steps=4, checkpointing_steps=10))
    assert r.stopped and r.steps == 2
    eq_([p.name for p in list_checkpoints(tmp_path)], ["checkpoint-2"])


def test_lr_blowup_names_a_good_checkpoint_that_resumes(example, tmp_path, capsys):
    "lr 1e6 after two sane steps: the run stops naming checkpoint-2 (not the blown-up checkpoint-3), exports its LoRA, and a resume from it at a sane lr trains on."
    kw = dict(checkpointing_steps=1, caption_dropout_probability=0.0)
    train(config(example, tmp_path, max_train_steps=2, **kw))
    with pytest.raises(TrainingError, match=r"not finite.*last good checkpoint is .*checkpoint-2 ") as e:
        train(config(example, tmp_path, max_train_steps=8, learning_rate=1e6, resume_from_checkpoint="latest", **kw))
    assert "learning_rate 0.001 → 1000000.0 (applied" in capsys.readouterr().out
    good = tmp_path / "checkpoint-2"
    a, b = load_file(good / "lora.safetensors"), load_file(tmp_path / "lora_peft.safetensors")
    for k in a: assert torch.equal(a[k], b[k]), k                  # the exports are checkpoint-2's LoRA
    r = train(config(example, tmp_path, max_train_steps=8, learning_rate=1e-3, resume_from_checkpoint=str(good), **kw))
    eq_(r.steps, 8)
    assert all(math.isfinite(l) and l < 10 * max(r.losses[:2]) for l in r.losses), r.losses
    lrs = [e["lr"] for e in training.read_progress(tmp_path) if e["event"] == "step"][-6:]
    eq_(lrs, [1e-3] * 6)


def test_resume_applies_a_changed_lr_and_refuses_a_changed_rank(example, tmp_path, capsys):
    train(config(example, tmp_path, max_train_steps=2, checkpointing_steps=2))
    r = train(config(example, tmp_path, max_train_steps=3, learning_rate=3e-5, resume_from_checkpoint="latest"))
    assert "resume: learning_rate 0.001 → 3e-05 (applied from here on)" in capsys.readouterr().out
    eq_([e["lr"] for e in training.read_progress(tmp_path) if e["event"] == "step"][-1], 3e-5)
    from longcat_nb.config import ConfigError
    with pytest.raises(ConfigError, match="lora_rank = 16, the checkpoint.s is"):
        train(config(example, tmp_path, max_train_steps=4, lora_rank=16, resume_from_checkpoint="latest"))


def test_a_used_output_dir_is_not_overwritten(example, tmp_path):
    from longcat_nb.config import ConfigError
    train(config(example, tmp_path, max_train_steps=1))
    with pytest.raises(ConfigError, match="already holds a run .* overwrite_output_dir"):
        train(config(example, tmp_path, max_train_steps=1))
    r = train(config(example, tmp_path, max_train_steps=2, checkpointing_steps=2, overwrite_output_dir=True))
    eq_([p.name for p in list_checkpoints(tmp_path)], ["checkpoint-2"])     # the old run's checkpoint-1 is gone
    assert r.steps == 2


def test_full_disk_one_line_then_exact_resume(example, tmp_path, monkeypatch):
    "torch.save fails at checkpoint-4 as on a full disk: one line, no half checkpoint, and the resume is exact."
    kw = dict(max_train_steps=5, checkpointing_steps=2)
    full = train(config(example, tmp_path / "full", **kw))
    real = torch.save
    def failing(obj, f, *a, **k):
        if ".checkpoint-4.tmp" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file data/0: file write failed")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(TrainingError, match=r"^No space left on device: writing checkpoint-4 in .* — free .* GB or set output_dir elsewhere$"):
        train(config(example, tmp_path / "cut", **kw))
    monkeypatch.undo()
    eq_([p.name for p in list_checkpoints(tmp_path / "cut")], ["checkpoint-2"])
    assert not list((tmp_path / "cut").glob(".checkpoint-*"))
    resumed = train(config(example, tmp_path / "cut", resume_from_checkpoint="latest", **kw))
    eq_(resumed.losses, full.losses)
    a, b = load_file(full.lora_paths[0]), load_file(resumed.lora_paths[0])
    for k in a: assert torch.equal(a[k], b[k]), k


def test_exports_and_checkpoints_follow_the_umask(example, tmp_path):
    r = train(config(example, tmp_path, max_train_steps=1))
    for p in [*r.lora_paths, r.checkpoint / "lora.safetensors"]:
        assert p.stat().st_mode & 0o044 == 0o044, (p, oct(p.stat().st_mode))   # group and others can read (umask 022)


def test_continuation_dataset_trains_beside_t2v_and_i2v(example, tmp_path, monkeypatch):
    """A continuation dataset (`video.continuation_latents: 2`) mixed with the example's T2V and I2V datasets in one
    run: each batch holds one kind with its K, and the model gets K = 0 / 1 / 2 clean frames at timestep 0."""
    from longcat_nb.caching import build_cache
    from longcat_nb.model import LongCatVideoTransformer3DModel
    entries = json.loads((Path(example).parent / "multidatabackend.json").read_text())
    t2v = next(e for e in entries if e["id"] == "example-t2v")
    entries.append({**t2v, "id": "example-cont", "video": {**t2v["video"], "continuation_latents": 2}})
    (tmp_path / "multidatabackend.json").write_text(json.dumps(entries))
    d = json.loads(Path(example).read_text())
    d.update(data_backend_config=str(tmp_path / "multidatabackend.json"), cache_dir=str(tmp_path / "cache"))
    (tmp_path / "config.json").write_text(json.dumps(d))
    cfg = config(tmp_path / "config.json", tmp_path / "out", max_train_steps=6, train_batch_size=2, checkpointing_steps=1000)
    build_cache(cfg, progress=False)
    batches, calls, real_loss, real_forward = [], [], training.flow_matching_loss, LongCatVideoTransformer3DModel.forward
    def spy(model, batch, *a, **kw):
        batches.append(({i.split("/")[0] for i in batch["ids"]}, batch["num_cond_latents"]))
        return real_loss(model, batch, *a, **kw)
    def forward(self, x, t, *a, num_cond_latents=0, **kw):
        calls.append((num_cond_latents, x.shape[2], t.detach().clone()))
        return real_forward(self, x, t, *a, num_cond_latents=num_cond_latents, **kw)
    monkeypatch.setattr(training, "flow_matching_loss", spy)
    monkeypatch.setattr(LongCatVideoTransformer3DModel, "forward", forward)
    eq_(train(cfg).steps, 6)
    kinds = {"example-t2v": 0, "example-i2v": 1, "example-cont": 2}
    for ids, k in batches:
        eq_(len(ids), 1)                                           # one dataset, so one K, a batch
        eq_(k, kinds[ids.pop()])
    eq_({k for _, k in batches}, {0, 1, 2})
    for k, T, t in calls:
        if k: eq_(t[:, :k], torch.zeros(len(t), k)); assert (t[:, k:] > 0).all() and T == t.shape[1]
