"""Memory settings through `longcat-nb train` at full size: step time, peak GPU memory, peak host RSS.

Runs `fullscale_e2e.py` (a copy of /work/shared/tools/fullscale_e2e.py given as --e2e) once per variant, each in its own
work folder sharing one checkpoint, polling the RSS of the process tree. A variant with `gpu_gib` caps the GPU with
`torch.cuda.set_per_process_memory_fraction` (through a sitecustomize.py on PYTHONPATH) so an overshoot fails.

    python benchmarks/bench_memory.py --e2e fullscale_e2e.py --work /tmp/bm --out results.jsonl [--only a,b]

The next GPU session (one H200, ~25 min of device time; copy /work/shared/tools/fullscale_e2e.py beside it first):

    PYTHONUNBUFFERED=1 python benchmarks/bench_memory.py --e2e fullscale_e2e.py --work /tmp/bm --out $OUT/bench_memory.jsonl \
        --only bf16,plan24,int8_swap48_offload_chunks16,plan16,fp8

Since the make_example_dataset fix (2026-11-30) the 832x480 clips train at 832x480 (37,440 tokens); the earlier rows
(benchmarks/results/bench_memory_h200.jsonl) trained at 896x512 (43,008 tokens). Each row's `plan_lines` shows what
the planner predicted; compare `train_peak_gib` with it (issue target: within 10%).
"""
import argparse, json, os, re, subprocess, sys, tempfile, time
from pathlib import Path

import psutil

from provenance import commit as tree_commit   # benchmarks/provenance.py: $LONGCAT_NB_COMMIT on the device

# validation inside each plan: the e2e config renders its T2V prompt at the end; this adds the I2V clip as the eval set
I2V_VALIDATION = {"validation_using_datasets": True, "eval_dataset_id": "example-i2v"}
VARIANTS = {
    "bf16": ({}, None),
    # the cards as torch sees them: a 24 GB L4 has 22.5 GiB (23,034 MiB), a 16 GB T4 15.0 GiB (15,360 MiB); the issue's
    # targets (≤ 22 / ≤ 14.5 GiB peak) are for those cards, so the planner plans for them and the cap is the card
    # (the unfused plans say "off": the config's default `auto` fuses the elementwise work of streamed blocks on CUDA)
    "plan24": ({"memory_plan": "auto", "memory_budget_gib": 22.5, "fused_elementwise": "off", **I2V_VALIDATION}, 22.5),
    "int8": ({"base_model_precision": "int8-quanto"}, None),
    "int4": ({"base_model_precision": "int4-quanto"}, None),
    "int8_swap48_offload16": ({"base_model_precision": "int8-quanto", "musubi_blocks_to_swap": 48, "activation_offload": True}, 16),
    "int8_swap48_offload_chunks16": ({"base_model_precision": "int8-quanto", "musubi_blocks_to_swap": 48, "activation_offload": True,
                                      "ffn_chunks": 8}, 16),
    "plan16": ({"memory_plan": "auto", "memory_budget_gib": 15.0, "fused_elementwise": "off", **I2V_VALIDATION}, 15.0),
    # the plans with the elementwise work compiled (fused_elementwise), the lever against their eager overhead
    "plan24_fused": ({"memory_plan": "auto", "memory_budget_gib": 22.5, "fused_elementwise": "on", **I2V_VALIDATION}, 22.5),
    "plan16_fused": ({"memory_plan": "auto", "memory_budget_gib": 15.0, "fused_elementwise": "on", **I2V_VALIDATION}, 15.0),
    # Kaggle: a 16 GB card and 29 GB of RAM; the bar is ≤ 27 GiB host RSS
    "plan16_kaggle": ({"memory_plan": "auto", "memory_budget_gib": 15.0, "memory_host_budget_gib": 27.0,
                       "fused_elementwise": "off", **I2V_VALIDATION}, 15.0),
    # a 16 GiB card with 27 GiB of host RAM: the refitted planner's int8 plan (15 GiB with 27 asks for more host RAM)
    "plan16g_kaggle": ({"memory_plan": "auto", "memory_budget_gib": 16.0, "memory_host_budget_gib": 27.0,
                        **I2V_VALIDATION}, 16.0),
    "plan16_kaggle_fused": ({"memory_plan": "auto", "memory_budget_gib": 15.0, "memory_host_budget_gib": 27.0,
                             "fused_elementwise": "on", **I2V_VALIDATION}, 15.0),
    "fp8": ({"base_model_precision": "fp8-torchao"}, None),
    # the settings plan16_kaggle_fused chose on 2026-12-05, spelt out: the 16 GB plan measured again once the swapped
    # blocks are pinned as they load (the planner's host term, fitted before that, refuses 15 GiB with 27 until refitted)
    "kaggle16_settings": ({"base_model_precision": "int8-quanto", "musubi_blocks_to_swap": 42, "activation_offload": True,
                           "ffn_chunks": 8, "recomputed_block_inputs": 32, "fused_elementwise": "on",
                           **I2V_VALIDATION}, 15.0),
}

SITE = """import os
if os.environ.get("BENCH_GPU_GIB"):
    import torch
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(float(os.environ["BENCH_GPU_GIB"]) * 2**30 / total)
"""


def tree_rss(p: psutil.Process) -> int:
    try: procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess: return 0
    total = 0
    for q in procs:
        try: total += q.memory_info().rss
        except psutil.NoSuchProcess: pass
    return total


def run(name, extra, gpu_gib, a, site):
    work = a.work / name
    work.mkdir(parents=True, exist_ok=True)
    if name != "bf16" and not (work / "ckpt").exists(): (work / "ckpt").symlink_to(a.work / "bf16" / "ckpt")
    env = dict(os.environ, PYTHONUNBUFFERED="1", E2E_SAMPLE_BEFORE_S="0", PYTHONPATH=f"{site}:{os.environ.get('PYTHONPATH', '')}")
    if gpu_gib: env["BENCH_GPU_GIB"] = str(gpu_gib)
    t0, peak, trace = time.time(), 0, []
    # eager blocks, as every row here was measured (compile_transformer's auto would compile the resident ones)
    run_keys = {"compile_transformer": False, **extra}
    proc = subprocess.Popen([sys.executable, a.e2e, str(work), "--steps", str(a.steps), "--rank", "16", "--extra", json.dumps(run_keys)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        rss = tree_rss(ps)
        peak = max(peak, rss)
        if not trace or time.time() - t0 >= trace[-1][0] + 2: trace.append((round(time.time() - t0, 1), round(rss / 2**30, 2)))
        time.sleep(0.5)
    out = proc.stdout.read()
    line = next((l for l in reversed(out.splitlines()) if l.startswith("{")), "{}")
    commit = tree_commit()
    res = dict(date=time.strftime("%Y-%m-%d"), commit=commit, command=" ".join(sys.argv), variant=name, extra=extra,
               gpu_gib_cap=gpu_gib, peak_host_rss_gib=round(peak / 2**30, 1), wall_s=round(time.time() - t0, 1),
               **json.loads(line))
    log = (work / "train.log").read_text() if (work / "train.log").exists() else out
    reserved = [float(x) for x in re.findall(r"reserved GiB=([0-9.]+)", log)]
    res["train_reserved_gib"] = max(reserved) if reserved else None
    res["host_rss_trace"] = trace               # (seconds, GiB) every ~2 s: where the host peak falls (loading, pinning, steps)
    progress = work / "out" / "progress.jsonl"  # the trainer's own events, each with its host memory now and peak so far
    events = [json.loads(l) for l in progress.read_text().splitlines() if l.strip()] if progress.exists() else []
    res["host_by_event"] = [[e["event"], e.get("step"), e.get("host_gib"), e.get("host_peak_gib")] for e in events
                            if e["event"] != "step" or e.get("step") in (1, 2)]
    res["videos"] = res.get("videos") or [str(v.relative_to(work)) for v in (work / "out").rglob("*.mp4")]
    res["plan_lines"] = [l for l in log.splitlines() if "memory_plan" in l or l.startswith(("config ", "plan ", "NVIDIA"))][:8]
    if "memory_plan" not in extra:                   # the planner's prediction for these settings at 832x480x93
        from longcat_nb.memory import predict
        keep = "keeping self-attention's outputs" in log
        res["predicted"] = predict(extra.get("base_model_precision", "bf16"), extra.get("musubi_blocks_to_swap", 0),
                                   extra.get("activation_offload", False), 37440, 16, ffn_chunks=extra.get("ffn_chunks", 1),
                                   keep_attention=keep, recomputed_inputs=extra.get("recomputed_block_inputs", 0)).__dict__
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--e2e", required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--only", default=",".join(VARIANTS))
    a = p.parse_args()
    site = tempfile.mkdtemp()
    Path(site, "sitecustomize.py").write_text(SITE)
    for name in a.only.split(","):
        res = run(name, *VARIANTS[name], a, site)
        print(json.dumps(res), flush=True)
        with open(a.out, "a") as f: f.write(json.dumps(res) + "\n")
