"""Readable lines in the library (issue 24): one statement a line and no line over 120 characters.

`longcat_nb/*.py` is generated from the notebooks, so a failure names the notebook and cell to edit; fix it there,
then run `nbdev-export`. Two parts of a module come from nbdev rather than from a code cell and are checked apart:
the module docstring, which is the notebook's `> summary` line (`test_summary_lines`), and `__all__`, which is not
checked: nbdev wraps it at 120 characters without counting the `__all__ = ` in front, so its first line may reach 130.
"""
import ast, re
from collections import Counter
from pathlib import Path

import pytest

LIB = Path(__file__).parents[1] / "longcat_nb"
MAX = 120
MODULES = sorted(p.stem for p in LIB.glob("*.py") if p.name != "_modidx.py")
PENDING: set[str] = set()
PENDING_WHY = "reformat pending"
LONG_SUMMARY: set[str] = set()
LONG_SUMMARY_WHY = "the notebook's one-line `> summary` (a markdown cell) is over 120 characters"
CELL = re.compile(r"^# %% (\S+\.ipynb) #(\w+)")
HEADER = re.compile(r"File to edit: (\S+\.ipynb)")


def params(names, pending, why):
    return [pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=why) if m in pending else (), id=m)
            for m in names]


def source(module):
    "The module's lines and syntax tree."
    text = (LIB / f"{module}.py").read_text(encoding="utf-8")
    return text.splitlines(), ast.parse(text)


def where(lines, i, module):
    "Where line `i` (1-based) of a module comes from: `nbs/<notebook>.ipynb cell <id>`, else its notebook."
    for line in reversed(lines[:i]):
        if m := CELL.match(line):
            return f"nbs/{Path(m[1]).name} cell {m[2]}"
    header = next((m for l in lines[:10] if (m := HEADER.search(l))), None)
    return f"nbs/{Path(header[1]).name}" if header else f"longcat_nb/{module}.py"


def module_docstring_lines(tree) -> set[int]:
    first = tree.body[0] if tree.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return set(range(first.lineno, first.end_lineno + 1))
    return set()


def all_lines(tree) -> set[int]:
    "The lines of the `__all__ = [...]` nbdev writes."
    return {i for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                                                      for t in n.targets)
            for i in range(n.lineno, n.end_lineno + 1)}


def report(module, lines, bad, what, fix):
    shown = "\n".join(f"  longcat_nb/{module}.py:{i} ({where(lines, i, module)}): {lines[i - 1].strip()[:90]}"
                      for i in bad[:20])
    more = f"\n  … and {len(bad) - 20} more" if len(bad) > 20 else ""
    return f"{len(bad)} line(s) {what}:\n{shown}{more}\n{fix}, then run nbdev-export."


@pytest.mark.parametrize("module", params(MODULES, PENDING, PENDING_WHY))
def test_no_line_over_120(module):
    lines, tree = source(module)
    skip = module_docstring_lines(tree) | all_lines(tree)
    bad = [i for i, l in enumerate(lines, 1) if len(l) > MAX and i not in skip]
    assert not bad, report(module, lines, bad, f"over {MAX} characters",
                           "Wrap them in the notebook's exported cell (inside brackets; split long strings by "
                           "implicit concatenation, keeping the value)")


@pytest.mark.parametrize("module", params(MODULES, PENDING, PENDING_WHY))
def test_one_statement_a_line(module):
    lines, tree = source(module)
    starts = Counter(n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt))
    bad = sorted(i for i, n in starts.items() if n > 1)
    assert not bad, report(module, lines, bad, "where two statements start (`a; b`, `if x: y`, `def f(): ...`)",
                           "Give each statement its own line in the notebook (the body of `if`/`for`/`try`/`def` "
                           "indented under its header)")


@pytest.mark.parametrize("module", params(MODULES, LONG_SUMMARY, LONG_SUMMARY_WHY))
def test_summary_lines(module):
    lines, tree = source(module)
    bad = sorted(i for i in module_docstring_lines(tree) if len(lines[i - 1]) > MAX)
    assert not bad, report(module, lines, bad, f"of the module docstring over {MAX} characters",
                           "The docstring is the notebook's `> summary`: split it over several `> ` lines")
