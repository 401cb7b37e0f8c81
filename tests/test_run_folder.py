"""A run owns its folder: a second training run on a folder in use is refused in one line naming the holder (in this
process and from another one, through the command line), a dead process's lock is taken over, and a kill while old
checkpoints are pruned leaves no visible partial checkpoint and a run that resumes."""
import json, os, socket, subprocess, sys, threading
from pathlib import Path

import pytest
from fastcore.test import test_eq as eq_

import longcat_nb.training as training
from longcat_nb.config import load_config
from longcat_nb.training import LOCK_FILE, OutputDirInUse, TrainingError, list_checkpoints, output_dir_lock, train
from test_training import config


def test_second_train_on_a_held_folder_is_refused(example, tmp_path, monkeypatch):
    "A second train() while the first (in a thread) holds the folder: refused, the first finishes, the lock goes."
    inside, go, real = threading.Event(), threading.Event(), training.flow_matching_loss
    def held(*a, **k):
        inside.set()
        assert go.wait(120), "the test never let the first run go on"
        return real(*a, **k)
    monkeypatch.setattr(training, "flow_matching_loss", held)
    first = {}
    thread = threading.Thread(target=lambda: first.update(result=train(config(example, tmp_path, max_train_steps=2),
                                                                         threading.Event())))
    thread.start()
    try:
        assert inside.wait(120), "the first run never reached its first step"
        who = f"pid {os.getpid()} on host {socket.gethostname()}"
        with pytest.raises(OutputDirInUse, match=f"is in use by another training run \\({who}"):
            train(config(example, tmp_path, max_train_steps=2, resume_from_checkpoint="latest"), threading.Event())
        assert issubclass(OutputDirInUse, TrainingError)
    finally:
        go.set()
        thread.join(300)
    eq_(first["result"].steps, 2)                            # the refusal did not disturb the holder
    assert not (tmp_path / LOCK_FILE).exists()


HOLD = """import sys
from longcat_nb.training import output_dir_lock
with output_dir_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_folder_held_by_another_process_refuses_the_command_line(example, tmp_path):
    "Another process holds the folder: train() and `python -m longcat_nb.training` refuse with its pid, one line."
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        eq_(holder.stdout.readline().strip(), "held")
        with pytest.raises(OutputDirInUse, match=f"pid {holder.pid} on host"):
            train(config(example, tmp_path, max_train_steps=1), threading.Event())
        cli = subprocess.run([sys.executable, "-m", "longcat_nb.training", "--config", str(example), "--output-dir",
                              str(tmp_path)], capture_output=True, text=True, timeout=300)
        eq_(cli.returncode, 1)
        line = [l for l in cli.stderr.splitlines() if l.strip()][-1]
        want = f"error: output_dir {tmp_path} is in use by another training run (pid {holder.pid}"
        assert line.startswith(want), line
        assert "choose another output_dir" in line, line
    finally:
        holder.stdin.close()
        holder.wait(60)
    assert not (tmp_path / LOCK_FILE).exists()               # the holder released it on its way out


def test_a_dead_process_lock_is_taken_over(example, tmp_path, capsys):
    "A lock left by a process that is gone from this host: the run takes it over with a notice and trains."
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(json.dumps(dict(pid=int(gone.stdout), host=socket.gethostname())))
    r = train(config(example, tmp_path, max_train_steps=1), threading.Event())
    eq_(r.steps, 1)
    assert f"taking over the lock of training process {int(gone.stdout)}" in capsys.readouterr().out
    assert not (tmp_path / LOCK_FILE).exists()


def test_killed_while_pruning_leaves_no_partial_checkpoint(example, tmp_path, monkeypatch, capsys):
    "A kill in the middle of deleting checkpoint-1: it is hidden (.deleting-), `latest` resumes checkpoint-2."
    real = training.shutil.rmtree
    def killed(path, *a, **k):
        path = Path(path)
        if not path.name.startswith(training.DELETING): return real(path, *a, **k)
        (path / "lora.safetensors").unlink()                # part of the delete happened, then the process died
        raise KeyboardInterrupt
    monkeypatch.setattr(training.shutil, "rmtree", killed)
    kw = dict(max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=1)
    with pytest.raises(KeyboardInterrupt): train(config(example, tmp_path, **kw), threading.Event())
    monkeypatch.undo()
    eq_([p.name for p in list_checkpoints(tmp_path)], ["checkpoint-2"])
    eq_(sorted(p.name for p in tmp_path.glob("*checkpoint-*")), [".deleting-checkpoint-1", "checkpoint-2"])
    assert not (tmp_path / LOCK_FILE).exists()               # released on the error
    capsys.readouterr()
    r = train(config(example, tmp_path, resume_from_checkpoint="latest", **kw), threading.Event())
    out = capsys.readouterr().out
    assert f"removed {tmp_path / '.deleting-checkpoint-1'}, left by an interrupted delete" in out, out
    assert f"resumed from {tmp_path / 'checkpoint-2'} at step 2" in out, out
    eq_(r.steps, 3)
    eq_(sorted(p.name for p in tmp_path.glob("*checkpoint-*")), ["checkpoint-3"])


def test_lock_is_released_on_stop(example, tmp_path):
    "A stop request ends the run with a checkpoint and releases the folder; the next run resumes it."
    stop = threading.Event()
    stop.set()
    r = train(config(example, tmp_path, max_train_steps=3), stop)
    assert r.stopped and not (tmp_path / LOCK_FILE).exists()
    with output_dir_lock(tmp_path): pass                     # free again
