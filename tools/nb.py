"""Round-trip notebooks and percent-format scripts, so notebooks can be written in a text editor.

    python tools/nb.py py2nb nbs/00_config.pct.py    # -> nbs/00_config.ipynb (output-free)
    python tools/nb.py nb2py nbs/00_config.ipynb     # -> nbs/00_config.pct.py

Format: `# %%` starts a code cell, `# %% [markdown]` a markdown cell (each line behind `# `);
`# %% tags=["parameters"]` sets cell tags; `id=abcd1234` keeps a cell's id (nb2py writes it for every cell).
The .ipynb is the source of truth that git keeps; the .pct.py files are scratch (git-ignored). Existing cells
keep their ids through a round trip, so inserting or moving a cell does not renumber the others (the exported
modules name cells by id); a new cell without an id gets one from the notebook name and its text.
"""
import hashlib, json, re, sys
from pathlib import Path

_HDR = re.compile(r"^# %%(?P<md> \[markdown\])?(?: id=(?P<id>[0-9a-f]{8}))?(?: tags=(?P<tags>\[.*\]))?\s*$")


def _cell_id(name, i, text="", taken=()):
    "A stable new id: from the notebook name and the cell's text (its position only breaks ties)."
    for salt in range(1000):
        h = hashlib.sha1(f"{name}:{text}:{salt or ''}".encode()).hexdigest()[:8]
        if h not in taken: return h
    return hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:8]


def py2nb(src: Path) -> Path:
    name = src.name.removesuffix(".pct.py")
    cells, cur = [], None
    for line in src.read_text().splitlines():
        m = _HDR.match(line)
        if m:
            cur = {"md": bool(m["md"]), "id": m["id"], "tags": json.loads(m["tags"]) if m["tags"] else [], "lines": []}
            cells.append(cur)
        elif cur is not None:
            cur["lines"].append(line)
    out, taken = [], {c["id"] for c in cells if c["id"]}
    for i, c in enumerate(cells):
        lines = c["lines"]
        while lines and not lines[-1].strip(): lines.pop()
        while lines and not lines[0].strip(): lines.pop(0)
        if c["md"]: lines = [l[2:] if l.startswith("# ") else l.lstrip("#") for l in lines]
        text = "\n".join(lines)
        src_lines = [l + "\n" for l in text.split("\n")]
        if src_lines: src_lines[-1] = src_lines[-1][:-1]
        cid = c["id"] or _cell_id(name, i, text, taken)
        taken.add(cid)
        cell = {"cell_type": "markdown" if c["md"] else "code", "id": cid,
                "metadata": {"tags": c["tags"]} if c["tags"] else {}, "source": src_lines}
        if not c["md"]: cell.update(execution_count=None, outputs=[])
        out.append(cell)
    nb = {"cells": out, "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    dst = src.with_name(name + ".ipynb")
    dst.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return dst


def nb2py(src: Path) -> Path:
    nb = json.loads(src.read_text())
    parts = []
    for c in nb["cells"]:
        tags = c.get("metadata", {}).get("tags")
        hdr = ("# %%" + (" [markdown]" if c["cell_type"] == "markdown" else "") + (f" id={c['id']}" if c.get("id") else "")
               + (f" tags={json.dumps(tags)}" if tags else ""))
        body = "".join(c["source"])
        if c["cell_type"] == "markdown": body = "\n".join(("# " + l) if l else "#" for l in body.split("\n"))
        parts.append(hdr + "\n" + body + "\n")
    dst = src.with_name(src.stem + ".pct.py")
    dst.write_text("\n".join(parts))
    return dst


if __name__ == "__main__":
    cmd, *paths = sys.argv[1:]
    for p in paths: print({"py2nb": py2nb, "nb2py": nb2py}[cmd](Path(p)))
