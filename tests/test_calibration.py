"""The memory planner's calibration tooling (benchmarks/calibrate_memory.py): one block's saved and peak bytes at a
quarter of the released width (seconds on a CPU) have the shape the planner relies on; at full width (LONGCAT_SLOW=1,
~2 min) they equal what longcat_nb/memory_calibration.json holds; the reserved-slack fit reads benchmark rows."""
import os, sys
from pathlib import Path

import pytest
from fastcore.test import test_close as close_, test_eq as eq_

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import calibrate_memory as cm  # noqa: E402
from longcat_nb.memory import CALIBRATION  # noqa: E402
from longcat_nb.model import ffn_hidden_size  # noqa: E402


@pytest.fixture(scope="module")
def small():
    return cm.block_activation_model(hidden=1024, heads=8)


def test_block_measurement_shape(small):
    plain, chunked = small[1], small[8]
    assert chunked["saved"]["FFN"] < plain["saved"]["FFN"] / 4 and chunked["saved"]["LoRA inputs"] < plain["saved"]["LoRA inputs"]
    assert chunked["peak"] < 0.85 * plain["peak"] and sum(chunked["saved"].values()) < 0.75 * sum(plain["saved"].values())
    for k in ("self-attention", "cross-attention", "modulation"): eq_(chunked["saved"][k], plain["saved"][k])
    # w1 x, w3 x, silu(w1 x): bf16, 2 B each; plus, with the LoRA in the GEMM epilogue, each FFN linear's rank-16
    # A(x) (saved inside the base linear's call, where PEFT's path counted it under "LoRA inputs": the total is the same)
    close_(plain["saved"]["FFN"], 3 * ffn_hidden_size(1024, 4) * 2 + 3 * 16 * 2, eps=1)
    eq_(plain["saved"]["modulation"], 1024 * 2)                              # the FFN LayerNorm's bf16 input (UpcastNorm)


def test_sampling_measurement(small):
    sampling = cm.sampling_activation_model(hidden=1024, heads=8)
    assert 0 < sampling["peak"] < small[1]["peak"] / 2       # a sampling forward holds well under half a training block's peak


@pytest.mark.skipif(not os.environ.get("LONGCAT_SLOW"), reason="full-width block measurement (~2 min): LONGCAT_SLOW=1")
def test_full_width_matches_the_calibration():
    full = cm.block_activation_model()
    for c in (1, 8):
        want = CALIBRATION["block"][c]
        close_(full[c]["peak"], want["peak"], eps=0.02 * want["peak"])
        for k, v in want["saved"].items(): close_(full[c]["saved"][k], v, eps=0.02 * v)


def test_reserved_slack_fit(tmp_path):
    rows = [dict(gpu_gib_cap=None, train_peak_gib=50.0, train_reserved_gib=51.5),
            dict(gpu_gib_cap=22.5, train_peak_gib=21.9, train_reserved_gib=22.5),       # at its cap: not evidence of slack
            dict(gpu_gib_cap=22.5, train_peak_gib=18.0, train_reserved_gib=21.6),       # below its cap: 1.2
            dict(gpu_gib_cap=None, train_peak_gib=40.0, train_reserved_gib=41.0)]
    eq_(cm.fit_reserved_slack(rows), round((1.025 * 1.2) ** 0.5, 3))                 # the smallest and largest ratio's mean
    path = tmp_path / "cal.json"
    path.write_text('{"reserved_slack": 1.0, "_reserved_slack": "note"}')
    cm.write({"reserved_slack": 1.03}, path)
    eq_(path.read_text().count("note"), 1)
    assert '"reserved_slack": 1.03' in path.read_text()


def test_host_base_fit_by_commit():
    "Swapped rows count only from the commit that changed how swapped blocks reach pinned memory; resident ones always."
    new = __import__("subprocess").run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    old, new = "0123abc", new.strip()                                # old: no commit of this history (a shallow clone)
    swapped = lambda rss, commit: dict(commit=commit, peak_host_rss_gib=rss, train_rc=0,
                                       extra={"base_model_precision": "int8-quanto", "musubi_blocks_to_swap": 42})
    resident = dict(commit=old, peak_host_rss_gib=4.5, train_rc=0, extra={"base_model_precision": "int8-quanto"})
    pinned = 11.54                                                   # 42 int8 blocks (memory.swap_host_bytes)
    rows = [swapped(pinned + 11.0, old), swapped(pinned + 5.0, new), resident]
    eq_(cm.fit_host_base(rows), {"swapped": {"int8-quanto": 11.1}, "resident": {"int8-quanto": 4.5}})
    eq_(cm.fit_host_base(rows, swapped_since=new), {"swapped": {"int8-quanto": 5.1}, "resident": {"int8-quanto": 4.5}})
    eq_(cm.fit_host_base([swapped(20.0, "unknown")], swapped_since=new), {})
    by_hand = {**swapped(pinned + 8.0, old), "env": {"TORCHINDUCTOR_COMPILE_THREADS": "1"}}   # in-process compile
    eq_(cm.fit_host_base([by_hand, resident], swapped_since=new), {"swapped": {"int8-quanto": 8.1}, "resident": {"int8-quanto": 4.5}})


def test_fused_workspace_fit_reads_the_logged_plan():
    """The fused share: the largest over runs with `fused_elementwise: on` of (peak allocated − the planner's other
    terms) / the unfused workspace, rounded up — with each run's settings read from the plan it logged; unfused and
    failed runs say nothing of it."""
    from longcat_nb.memory import GiB, predict, workspace_bytes
    line = "plan    int8-quanto  38              yes           8           24                 14.2          25.6      22.2"
    unfused = predict("int8-quanto", 38, True, 37440, ffn_chunks=8, recomputed_inputs=24).allocated_gib * GiB
    ws = workspace_bytes(37440, 8)
    peak = lambda share: (unfused - ws + share * ws) / GiB
    fused = lambda share, **kw: dict(extra={"fused_elementwise": "on"}, plan_lines=[line], train_peak_gib=peak(share),
                                     **kw)
    unfused_run = dict(extra={}, plan_lines=[line], train_peak_gib=peak(1.0))
    rows = [fused(0.775), fused(0.795), fused(0.95, train_rc=1), unfused_run]
    eq_(cm.fused_workspace(rows), 0.8)
