"""Step times of a training run from its `progress.jsonl` (issue 22): the first step (compiling, warming up), the
steady seconds a step, and the steps just before and just after each validation — a step after a validation that is
slower than the ones before it is a recompile (or a cold cache) paid inside training.

    python benchmarks/step_timeline.py OUTPUT_DIR [OUTPUT_DIR ...]

One JSON line per run. The trainer reads its step values every `LOGGING_STEPS` steps (and before checkpoints,
validation and stops), so a step's `s_per_step` is the average of its read interval; run with `training.LOGGING_STEPS
= 1` (e.g. `python -c "import longcat_nb.training as t; t.LOGGING_STEPS = 1; t.main()" --config ...`) for each step's
own time, at the cost of one host sync a step.
"""
import json, statistics, sys
from pathlib import Path


def timeline(output_dir) -> dict:
    "The summary of one run's `progress.jsonl` (the last `start` onwards: a resumed run's own steps)."
    events = [json.loads(l) for l in (Path(output_dir) / "progress.jsonl").read_text().splitlines() if l.strip()]
    start = max(i for i, e in enumerate(events) if e["event"] == "start")
    events = events[start:]
    steps = [e for e in events if e["event"] == "step"]
    validations = [e["step"] for e in events if e["event"] == "validation"]
    seconds = {e["step"]: e["s_per_step"] for e in steps}
    first = steps[0]["step"] if steps else None
    later = [s for step, s in seconds.items() if step != first]
    around = []
    for v in validations:
        before = [seconds[s] for s in seconds if s <= v and s != first][-3:]
        after = [seconds[s] for s in seconds if s > v][:3]
        if before and after:
            around.append(dict(validation_step=v, before_s=before, after_s=after,
                               after_over_before=round(statistics.median(after) / statistics.median(before), 2)))
    return dict(output_dir=str(output_dir), steps=len(steps), first_step_s=seconds.get(first),
                steady_s_per_step=round(statistics.median(later), 3) if later else None,
                peak_gib=max((e["peak_gib"] for e in steps if "peak_gib" in e), default=None),
                reserved_gib=max((e["reserved_gib"] for e in steps if "reserved_gib" in e), default=None),
                around_validation=around)


if __name__ == "__main__":
    for d in sys.argv[1:]: print(json.dumps(timeline(d)))
