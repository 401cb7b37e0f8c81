"Every measured table in the docs is what benchmarks/tables.py renders from its JSON results (none copied by hand)."
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import tables  # noqa: E402


def test_tables_match_their_json():
    assert tables.stale() == [], "regenerate with `python benchmarks/tables.py`"


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    path, fn = tables.TABLES["memory-plans"]
    copy = tmp_path / "RESULTS.md"
    copy.write_text(path.read_text().replace(fn().splitlines()[2], fn().splitlines()[2].replace("|", "| 9", 1)))
    monkeypatch.setitem(tables.TABLES, "memory-plans", (copy, fn))
    assert tables.stale() == ["memory-plans"]
