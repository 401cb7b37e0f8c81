"""Long single-process commands a test module queues when it is collected (`Background`): one at a time, at low
priority, they run beside the other tests on the core those leave idle (the suite keeps ~1.2 of CI's 2 cores busy),
and the test that needs one waits for its result (starting it then, if its turn has not come)."""
import os
import subprocess
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_QUEUE = []                      # every Background, in the order modules were collected
_LOCK = threading.Lock()
_LANE = None                     # the thread that starts them one after another
_CLOSED = False                  # the session is over: start nothing more


class Background:
    """`argv` queued now; its output goes to files (a pipe would fill and stall it). `result()` waits for it and gives
    a `subprocess.CompletedProcess` with its stdout and stderr."""

    def __init__(self, argv, env=None, cwd=ROOT, timeout: float = 900):
        self.argv, self.env, self.cwd, self.timeout = list(map(str, argv)), env, cwd, timeout
        self.out, self.err = (tempfile.TemporaryFile("w+") for _ in range(2))
        self.proc = None
        with _LOCK:
            _QUEUE.append(self)
        _run_lane()

    def start(self) -> bool:
        "Start it unless it was started (or the session is over); whether this call started it."
        with _LOCK:
            if self.proc is not None or _CLOSED:
                return False
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self.out, stderr=self.err,
                                         text=True)
            if hasattr(os, "setpriority"):       # the tests in the foreground come first (no preexec_fn: threads)
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, 10)
            return True

    def result(self) -> subprocess.CompletedProcess:
        self.start()
        try:
            self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        text = []
        for f in (self.out, self.err):
            f.seek(0)
            text.append(f.read())
        return subprocess.CompletedProcess(self.argv, self.proc.returncode, *text)


def _lane():
    "Start the queued commands one after another, each once the one before has finished."
    i = 0
    while True:
        with _LOCK:
            if _CLOSED or i >= len(_QUEUE):
                return
            job = _QUEUE[i]
        i += 1
        job.start()
        if job.proc is not None:
            job.proc.wait()


def _run_lane():
    global _LANE
    with _LOCK:
        if _LANE is None or not _LANE.is_alive():
            _LANE = threading.Thread(target=_lane, daemon=True)
            _LANE.start()


def kill_unfinished():
    "Start nothing more and kill what still runs (the session is over: no test will wait for it)."
    global _CLOSED
    with _LOCK:
        _CLOSED = True
    for job in _QUEUE:
        if job.proc is not None and job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait()
