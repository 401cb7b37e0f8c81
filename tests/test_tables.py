"Every measured table in the docs is what benchmarks/tables.py renders from its JSON results (none copied by hand)."
import json, shutil, subprocess, sys
from pathlib import Path

import pytest
from fastcore.test import test_eq as eq_

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import tables  # noqa: E402


@pytest.mark.parametrize("name", list(tables.TABLES))
def test_each_table_renders_into_its_markers(name):
    fn, paths = tables.TABLES[name]
    table = fn()
    assert table.startswith("| ") and "\n|---" in table and "benchmarks/results/" in table
    for path in paths: assert tables._marked(path, name), path


def test_tables_match_their_json():
    assert tables.stale() == [], "regenerate with `python benchmarks/tables.py` (then nbdev-clean)"


def test_every_result_records_its_provenance():
    assert tables.missing_provenance() == []


@pytest.fixture
def results_copy(tmp_path, monkeypatch):
    "A copy of benchmarks/results that the renderers read instead."
    copy = tmp_path / "results"
    shutil.copytree(tables.RESULTS, copy)
    monkeypatch.setattr(tables, "RESULTS", copy)
    return copy


def _tamper(path: Path, old: str, new: str):
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def test_a_changed_figure_is_caught(results_copy):
    _tamper(results_copy / "bench_vae_h200.json", '"median_s": 1.3019', '"median_s": 1.4019')
    assert tables.stale() == ["vae"]


def test_a_changed_figure_in_a_chapter_table_is_caught(results_copy):
    _tamper(results_copy / "bsa_kernels_h200_2026-12-04.json", '"whole_path_triton": 6.85', '"whole_path_triton": 6.95')
    assert tables.stale() == ["bsa-kernels"]          # shown in RESULTS.md and nbs/09_kernels.ipynb


def test_a_stale_notebook_cell_is_caught_and_its_layout_ignored(tmp_path, monkeypatch):
    fn, (results_md, nb) = tables.TABLES["bsa-kernels"]
    copy = tmp_path / nb.name
    cells = json.loads(nb.read_text())
    copy.write_text(json.dumps(cells, indent=2, ensure_ascii=False))  # another JSON layout: the check compares the cells' text only
    monkeypatch.setitem(tables.TABLES, "bsa-kernels", (fn, [results_md, copy]))
    assert tables.stale() == []
    copy.write_text(copy.read_text().replace("| 9.84× |", "| 9.94× |"))
    assert tables.stale() == ["bsa-kernels"]
    tables.write(copy, "bsa-kernels", fn())           # rendering repairs it, in nbdev-clean's layout
    assert tables.stale() == [] and copy.read_text() == nb.read_text()


def test_check_command_fails_on_a_changed_figure(tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(tables.RESULTS, copy)
    _tamper(copy / "bench_bsa.json", '"dense_fwd_ms": 42.06', '"dense_fwd_ms": 44.06')
    run = subprocess.run([sys.executable, str(BENCH / "tables.py"), "--check", "--results", str(copy)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "stale tables: bsa" in run.stdout, run.stdout + run.stderr


def test_newest_results_come_last_by_the_date_in_their_names(results_copy):
    "A table that takes the newest file reads the date in its name, not the GPU before it."
    for name in ("dated_h200_2026-12-06.json", "dated_h100_2026-12-07.json", "dated_h200_2026-12-06_b.json"):
        (results_copy / name).write_text("{}")                  # a kind no real results file has
    assert tables._newest("dated_*.json") == ["dated_h200_2026-12-06.json", "dated_h200_2026-12-06_b.json",
                                              "dated_h100_2026-12-07.json"]


def test_sample_cli_keeps_each_gpus_newest_row_and_its_seconds_a_step(results_copy):
    """Another GPU's run adds rows beside the H100's (it does not replace them); a later file of the same GPU and day
    replaces an earlier one's row; s/step is the steps' time per step."""
    d = json.loads((results_copy / "sample_cli_h100_2026-12-06_distilled.json").read_text())
    row = dict(d["rows"][0], variant="cfg40", args=["--steps", "40", "--guidance", "4"], denoise_s=300.0)
    h200 = dict(d, gpu="NVIDIA H200", commit="abc1234", rows=[row])
    (results_copy / "sample_cli_h200_2026-12-07_cfg40.json").write_text(json.dumps(h200))
    later = dict(d, commit="def5678", rows=[dict(d["rows"][0], denoise_s=64.0, first_step_s=8.5)])
    (results_copy / "sample_cli_h100_2026-12-06_run9_distilled.json").write_text(json.dumps(later))
    lines = [ln.split(" | ") for ln in tables.sample_cli().splitlines()]
    lines = [ln for ln in lines if ln[0] in ("| cfg40", "| distilled")]             # not the other variants' rows
    eq_([ln[:3] for ln in lines], [["| cfg40", "H200", "abc1234"], ["| distilled", "H100 80GB HBM3", "def5678"],
                                   ["| cfg40", "H100 80GB HBM3", lines[2][2]]])
    eq_([lines[0][7], lines[1][7]], ["7.50", "4.00"])
    eq_([lines[0][8:10], lines[1][8:10]], [["—", "—"], ["8.5", "3.70"]])              # first step, the other 15's mean
    assert tables.sample_steps(["--distilled"]) == 16 and tables.sample_steps([]) == 40
