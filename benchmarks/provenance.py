"""What every benchmark result records about where it came from (benchmarks/tables.py refuses a results file without
it): the date, the commit it ran on, the GPU, torch's version and the command line."""
import json, os, subprocess, sys, time


def provenance() -> dict:
    """`date`, `commit` (short hash, or 'unknown' outside git; on the device machine, whose copy's git metadata is not
    the tree's, $LONGCAT_NB_COMMIT, which gpu_session.sh sets from what device_carry.sh recorded), `gpu` (or 'cpu'),
    `torch` and `command` of this run."""
    import torch
    return dict(date=time.strftime("%Y-%m-%d"), commit=commit(), gpu=torch.cuda.get_device_name() if
                torch.cuda.is_available() else "cpu", torch=torch.__version__, command=" ".join(sys.argv))


def commit() -> str:
    "The commit this tree is: $LONGCAT_NB_COMMIT when set, else git's short HEAD, else 'unknown'."
    if os.environ.get("LONGCAT_NB_COMMIT"):
        return os.environ["LONGCAT_NB_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() \
            or "unknown"
    except OSError:
        return "unknown"


def emit(result: dict, path=None) -> dict:
    "Print `result` as one JSON line and, with a `path`, write that line there too; returns `result`."
    text = json.dumps(result)
    print(text)
    if path:
        with open(path, "w") as f: f.write(text + "\n")
    return result
