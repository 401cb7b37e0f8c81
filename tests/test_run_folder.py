"""A run owns its folder: a second training run on a folder in use is refused in one line naming the holder (in this
process and from another one, through the command line, the workbench and papermill, leaving the folder untouched), a
dead or killed process's lock is taken over, and a kill while old checkpoints are pruned leaves no visible partial
checkpoint and a run that resumes."""
import json, os, signal, socket, subprocess, sys, threading, time
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


# Concurrent use from the three front ends: while `longcat-nb train` holds a folder, a second CLI run, the workbench's
# Train tab and papermill's examples/train.ipynb pointed at it are refused in one line naming the holder, and leave
# the folder as it was; once the holder is killed, the next run takes the lock over. One holder serves every case.
CLI = [sys.executable, "-c", "import sys; from longcat_nb.cli import main; sys.exit(main())"]  # = the longcat-nb script


def _files(folder: Path) -> dict:
    "Every file under `folder` with its bytes: what a refused run must leave unchanged."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def held(example, tmp_path_factory):
    """`longcat-nb train` on a tmp copy of the tiny example config, many steps, holding its `output_dir`; paused
    (SIGSTOP: still alive, still holding the lock) once it has logged a step, so the folder stays byte-for-byte
    still while the other front ends try it. Yields `(config path, output_dir, holder process, folder snapshot)`."""
    root = tmp_path_factory.mktemp("held")
    out = root / "out"
    cfg = json.loads(Path(example).read_text()) | dict(output_dir=str(out), max_train_steps=100_000, checkpointing_steps=100_000,
                                                       validation_prompt=None, report_to="none")
    path = root / "config.json"
    path.write_text(json.dumps(cfg, indent=2))
    log = root / "holder.log"                                 # a file, not a pipe: a full pipe would block the holder
    with open(log, "w") as f:
        holder = subprocess.Popen([*CLI, "train", "--config", str(path)], stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not any(e["event"] == "step" for e in training.read_progress(out)):
            assert holder.poll() is None, f"the holder ended early: {log.read_text()[-2000:]}"
            assert time.time() < deadline, "the holder did not reach its first step"
            time.sleep(0.1)
        os.kill(holder.pid, signal.SIGSTOP)
        yield path, out, holder, _files(out)
    finally:
        if holder.poll() is None: holder.kill()
        holder.wait(60)


def _refusal(out: Path, holder) -> str:
    return f"output_dir {out} is in use by another training run (pid {holder.pid} on host {socket.gethostname()}"


def test_cli_train_into_a_held_folder_is_refused(held):
    path, out, holder, before = held
    r = subprocess.run([*CLI, "train", "--config", str(path)], capture_output=True, text=True, timeout=300)
    eq_(r.returncode, 1)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    eq_(len(lines), 1)
    assert lines[0].startswith("error: " + _refusal(out, holder)) and "choose another output_dir" in lines[0], lines
    eq_(_files(out), before)


def test_workbench_train_tab_on_a_held_folder_shows_the_refusal(held):
    from longcat_nb.widgets import TrainView
    path, out, holder, before = held
    view = TrainView(path, background=False)
    for click in (view.start_button, view.resume_button):
        click.click()
        assert view.proc is None and _refusal(out, holder) in view.status.value, view.status.value
        eq_(view.status.value.count("color:#c62828"), 1)    # one red line
    view.start(overwrite=True)                                # "Overwrite it" must not delete the holder's run
    assert view.proc is None and _refusal(out, holder) in view.status.value, view.status.value
    eq_(_files(out), before)


def test_a_workbench_view_of_a_held_folder_does_not_call_the_run_ended(held):
    from longcat_nb.widgets import TrainView
    path, out, holder, before = held
    view = TrainView(path, background=False)
    assert "training process ended" not in view.status.value, view.status.value


def test_held_folder_in_a_real_kernel(held, tmp_path):
    """The same two paths as the workbench meets them inside a Jupyter kernel (nbclient): a view opened on the held
    folder follows the run (not "ended"), and Start refuses in one line naming the holder — no error or stderr output."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from test_workbench_kernel import _printed, one_line
    path, out, holder, before = held
    cell = f"""
import json, comm
comm.create_comm = comm.DummyComm
from longcat_nb.widgets import TrainView
view = TrainView({str(path)!r}, background=False)
opened, running = view.status.value, view.running()
view.start_button.click()
print(json.dumps({{"opened": opened, "running": running, "status": view.status.value, "proc": view.proc is None}}))
"""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    got = _printed(nb.cells[0])
    assert "training process ended" not in got["opened"] and got["running"] is True, got
    assert got["proc"] and _refusal(out, holder) in one_line(got["status"]), got["status"]
    eq_(_files(out), before)


def test_papermill_into_a_held_folder_is_refused(held, tmp_path):
    pm = pytest.importorskip("papermill")
    path, out, holder, before = held
    nb = Path(__file__).parents[1] / "examples" / "train.ipynb"
    params = next(c for c in json.loads(nb.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert 'output_dir = "outputs/papermill/run"' in "".join(params["source"])   # by default its own folder, not the config's
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(nb), str(tmp_path / "train.ipynb"), kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
                            parameters=dict(config=str(path), output_dir=str(out), run_cache=False, max_train_steps=2,
                                            results_json=str(tmp_path / "train.json")))
    eq_(e.value.ename, "OutputDirInUse")
    assert _refusal(out, holder) in e.value.evalue, e.value.evalue
    eq_(_files(out), before)


def test_a_killed_holder_is_taken_over(held, capsys):
    "Last: SIGKILL leaves the lock behind; the next run takes it over (the holder is gone from this host) and trains."
    path, out, holder, _ = held
    holder.kill()
    holder.wait(60)
    assert (out / LOCK_FILE).is_file()
    r = train(config(path, out, max_train_steps=1, overwrite_output_dir=True), threading.Event())
    eq_(r.steps, 1)
    assert f"taking over the lock of training process {holder.pid}" in capsys.readouterr().out
    assert not (out / LOCK_FILE).exists()
