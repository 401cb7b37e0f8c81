"""Measured tables, rendered from the benchmarks' JSON results (benchmarks/results/) into the Markdown files that show
them, between `<!-- table:NAME:start -->` and `<!-- table:NAME:end -->` markers, so no figure is copied by hand.

    python benchmarks/tables.py            # rewrite every table in place
    python benchmarks/tables.py --check    # exit 1 when a table differs from its JSON (tests/test_tables.py)
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (RESULTS / name).read_text().splitlines() if line.strip()]


def _plan(row: dict) -> str:
    "The settings a memory run trained with: the planner's choice (`plan_lines`) or the variant's own keys."
    chosen = next((line.split() for line in row.get("plan_lines", []) if line.startswith("plan ")), None)
    if chosen:
        recomputed = f", {chosen[5]} inputs recomputed" if len(chosen) == 9 else ""
        return f"{chosen[1]}, {chosen[2]} swapped, offload {chosen[3]}, FFN chunks {chosen[4]}{recomputed}"
    return ", ".join(f"{k}: {v}" for k, v in row["extra"].items())


def memory_plans() -> str:
    "`longcat-nb train` at 832×480×93 under each memory setting (benchmarks/bench_memory.py rows)."
    head = ["| run | settings | GPU cap GiB | s/step | peak allocated GiB | peak reserved GiB | host RSS GiB | "
            "validation videos | date, commit |", "|---|---|---|---|---|---|---|---|---|"]
    body = []
    rows = [r for f in sorted(RESULTS.glob("memory_h200_*.jsonl")) for r in _rows(f.name)]
    for r in rows:
        cap = r["gpu_gib_cap"] or "—"
        body.append(f"| {r['variant']} | {_plan(r)} | {cap} | {r['train_step_s'][-1]:.2f} | {r['train_peak_gib']:.1f} | "
                    f"{r['train_reserved_gib']:.1f} | {r['peak_host_rss_gib']:.1f} | {len(r['videos'])} | "
                    f"{r['date']}, {r['commit']} |")
    gpu = {r["gpu"] + ", torch " + r["torch"] for r in rows}
    return "\n".join(head + body + ["", f"({'; '.join(sorted(gpu))}; step = the last step of two; each row's command "
                                        "is in its JSON line.)"])


TABLES = {"memory-plans": (ROOT / "benchmarks" / "RESULTS.md", memory_plans)}


def render(text: str, name: str, table: str) -> str:
    "`text` with the table `name` replaced by `table` (its markers must be there)."
    pattern = re.compile(rf"(<!-- table:{name}:start -->\n)(?:.*?\n)?(<!-- table:{name}:end -->)", re.S)
    if not pattern.search(text): raise SystemExit(f"no <!-- table:{name}:start/end --> markers")
    return pattern.sub(lambda m: m[1] + table + "\n" + m[2], text)


def stale() -> list[str]:
    "Names of tables whose Markdown differs from what their JSON renders."
    return [n for n, (path, fn) in TABLES.items() if render(path.read_text(), n, fn()) != path.read_text()]


if __name__ == "__main__":
    if "--check" in sys.argv:
        bad = stale()
        print("stale tables: " + ", ".join(bad) if bad else "all tables match their JSON")
        sys.exit(1 if bad else 0)
    for name, (path, fn) in TABLES.items(): path.write_text(render(path.read_text(), name, fn()))
    print("tables rendered:", ", ".join(TABLES))
