"""What every benchmark result records about where it came from (benchmarks/tables.py refuses a results file without
it): the date, the commit it ran on, the GPU, torch's version and the command line."""
import json, subprocess, sys, time


def provenance() -> dict:
    "`date`, `commit` (short hash, or 'unknown' outside git), `gpu` (or 'cpu'), `torch` and `command` of this run."
    import torch
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return dict(date=time.strftime("%Y-%m-%d"), commit=commit or "unknown", gpu=gpu, torch=torch.__version__,
                command=" ".join(sys.argv))


def emit(result: dict, path=None) -> dict:
    "Print `result` as one JSON line and, with a `path`, write that line there too; returns `result`."
    text = json.dumps(result)
    print(text)
    if path:
        with open(path, "w") as f: f.write(text + "\n")
    return result
