"""Build the docs without Quarto: README.md from nbs/index.ipynb, and the HTML site in _docs/ from every notebook.

    python tools/docs.py execute   # run nbs/index.ipynb again in place: its tour and config reference (~20 s)
    python tools/docs.py readme    # README.md and index_files/ (its images) from nbs/index.ipynb as saved
    python tools/docs.py site      # _docs/: index.html, a page per chapter, RESULTS.html (nothing is executed)
    python tools/docs.py check     # exit 1 unless README.md and index_files/ are what `readme` writes

nbdev 3 renders with Quarto (`nbdev-readme`, `nbdev-docs`), which cannot be installed on these machines: PyPI's
`quarto-cli` is a source package whose build downloads the binary from GitHub. This does the same two steps offline:
nbdev's own notebook processors (what `nbdev-proc-nbs` runs before Quarto: hidden cells dropped, directives removed,
the title and summary made front matter; `skip_procs` in pyproject.toml keeps exported code visible), then nbconvert,
Jupyter's renderer, for Markdown and HTML. Quarto's cell options `echo`, `output` and `include` are honoured. Links between notebooks are written relative to `nbs/`
(`07_training.ipynb`, `../benchmarks/RESULTS.md`); the README gets them relative to the repository root, the site
gets its pages. Where Quarto is installed, `nbdev-readme` and `nbdev-docs` read the same `nbs/` files.
"""
import argparse, filecmp, html, os, re, shutil, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, README_NB = ROOT / "nbs", "index.ipynb"
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def processed(path):
    "The notebook at `path` after nbdev's docs processors, as an nbformat node (the first cell: raw front matter)."
    import nbformat
    from fastcore.nbio import nb2str, read_nb
    from fastcore.xtras import working_directory
    from nbdev.processors import FilterDefaults
    with working_directory(ROOT):                    # nbdev reads [tool.nbdev] from the project it runs in
        old = os.environ.get("IN_TEST")
        os.environ["IN_TEST"] = "1"                  # as nbdev's own processing step sets it: nothing is exported
        try:
            nb = read_nb(path)
            FilterDefaults()(nb)
        finally:
            if old is None: os.environ.pop("IN_TEST")
            else: os.environ["IN_TEST"] = old
    return nbformat.reads(nb2str(nb), as_version=4)


def _options(source: str) -> tuple[dict, str]:
    "Quarto's `#| key: value` cell options at the top of `source`, and the source without them."
    lines, opts = source.split("\n"), {}
    while lines and (m := re.match(r"#\|\s*([\w-]+)\s*:\s*(.*?)\s*$", lines[0])):
        opts[m[1]] = m[2].lower()
        lines.pop(0)
    return opts, "\n".join(lines)


def presentable(nb) -> tuple[object, dict]:
    """`nb` (processed) as a reader sees it, and its front matter: the title and summary as a heading, cells with
    `include: false` dropped, sources of `echo: false` cells and outputs of `output: false` cells left out."""
    import nbformat, yaml
    meta, cells = {}, []
    for c in nb.cells:
        if c.cell_type == "raw" and c.source.startswith("---"):
            meta = yaml.safe_load(c.source.strip().strip("-")) or {}
            head = f"# {meta.get('title', '')}" + (f"\n\n> {meta['description']}" if meta.get("description") else "")
            cells.append(nbformat.v4.new_markdown_cell(head))
            continue
        if c.cell_type == "code":
            opts, c.source = _options(c.source)
            if opts.get("include") == "false" or not (c.source.strip() or c.outputs): continue
            if opts.get("output") == "false": c.outputs = []
            if opts.get("echo") == "false":
                if not c.outputs: continue
                c.metadata.setdefault("transient", {})["remove_source"] = True
        cells.append(c)
    nb.cells = cells
    nb.metadata.setdefault("language_info", {"name": "python"})     # code blocks say their language
    return nb, meta


def _relink(nb, fn):
    "Rewrite every relative link target in `nb`'s markdown (cells and markdown outputs) with `fn`."
    def sub(text): return _LINK.sub(lambda m: m[1] + (m[2] if re.match(r"[a-z]+:|#", m[2]) else fn(m[2])) + m[3], text)
    for c in nb.cells:
        if c.cell_type == "markdown": c.source = sub(c.source)
        for o in c.get("outputs", []):
            if "text/markdown" in o.get("data", {}): o.data["text/markdown"] = sub(o.data["text/markdown"])


def _from_nbs(target: str) -> str:
    "A link written relative to `nbs/`, relative to the repository root."
    path, _, frag = target.partition("#")
    return os.path.normpath(os.path.join("nbs", path)).replace(os.sep, "/") + (f"#{frag}" if frag else "")


_MD_TEMPLATE = """{%- extends 'markdown/index.md.j2' -%}
{% block data_png %}
![]({{ output.metadata.filenames['image/png'] | path2url }})
{% endblock data_png %}
"""


def render_readme(dst: Path):
    "Write README.md and index_files/ (the images of its outputs) into the folder `dst`."
    import jinja2
    from nbconvert import MarkdownExporter
    nb, _ = presentable(processed(NBS / README_NB))
    _relink(nb, _from_nbs)
    for c in nb.cells:                               # nbdev's warning, saying where the source is
        if c.cell_type == "markdown" and "WARNING: THIS FILE WAS AUTOGENERATED" in c.source:
            c.source = ("<!-- Generated from nbs/index.ipynb by `python tools/docs.py readme`: edit the notebook, "
                        "not this file. -->")
    files = Path(README_NB).stem + "_files"
    exporter = MarkdownExporter(extra_loaders=[jinja2.DictLoader({"readme.md.j2": _MD_TEMPLATE})],
                                template_file="readme.md.j2")
    text, res = exporter.from_notebook_node(nb, resources={"output_files_dir": files, "unique_key": "output"})
    shutil.rmtree(dst / files, ignore_errors=True)
    for name, data in sorted(res.get("outputs", {}).items()):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_bytes(data)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    (dst / "README.md").write_text(re.sub(r"\n{3,}", "\n\n", text).strip() + "\n")


def readme_differences(root: Path = ROOT) -> list[str]:
    "What differs between the README.md / index_files/ in `root` and a fresh render of nbs/index.ipynb."
    with tempfile.TemporaryDirectory() as tmp:
        render_readme(Path(tmp))
        new, old = Path(tmp), root
        names = {p.relative_to(d).as_posix() for d in (new, old) for p in [d / "README.md", *(d / "index_files").rglob("*")]
                 if p.is_file()}
        return sorted(n for n in names if not ((new / n).is_file() and (old / n).is_file()
                                               and filecmp.cmp(new / n, old / n, shallow=False)))


def execute(path: Path = NBS / README_NB, timeout: int = 600):
    "Run the notebook at `path` in place (kernel python3, in its folder) and keep its outputs for nbstripout."
    import nbformat
    from nbclient import NotebookClient
    from longcat_nb.tiny import tiny_checkpoint
    tiny_checkpoint()                                # built here, so building it prints no progress into the outputs
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                   store_widget_state=False).execute()
    nb.metadata["keep_output"] = True                # nbstripout keeps this notebook's outputs (nbdev-clean allows the key)
    nbformat.write(nb, path)
    from fastcore.xtras import working_directory
    from nbdev.clean import nbdev_clean
    with working_directory(ROOT): nbdev_clean.__wrapped__(fname=str(path))   # as committed: no counts, no transient ids


def _nav(pages, current) -> str:
    cls = {f: ' class="current"' if f == current else "" for f, _ in pages}
    items = "".join(f'<li{cls[f]}><a href="{f}">{html.escape(t)}</a></li>' for f, t in pages)
    return f"<nav class=\"docs-nav\"><ul>{items}</ul></nav>"


_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block extra_css -%}<link rel="icon" href="data:,"><style>
.docs-nav { position: sticky; top: 0; z-index: 10; background: #f5f7fa; border-bottom: 1px solid #d0d7de; padding: 4px 12px; }
.docs-nav ul { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 2px 14px; }
.docs-nav li.current a { font-weight: bold; }
main { max-width: 1100px; margin: 0 auto; }
.jp-RenderedMarkdown pre { background: #f5f5f5; padding: 6px 8px; }
</style>{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}{{ resources.docs_nav }}{%- endblock body_header -%}
"""


def _anchors(page: str) -> str:
    "Point `#fragment` links written as GitHub slugs (`#config-reference`) at nbconvert's heading ids (`Config-reference`)."
    ids = {i.lower(): i for i in re.findall(r'\bid="([^"]+)"', page)}
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{ids.get(m[1].lower(), m[1])}"', page)


def build_site(dst: Path = ROOT / "_docs"):
    "Render every notebook in nbs/ (as saved: nothing is executed) and benchmarks/RESULTS.md into the HTML site `dst`."
    import jinja2, nbformat
    from nbconvert import HTMLExporter
    from nbdev.config import nbpath2html
    import yaml
    sidebar = NBS / "sidebar.yml"                    # nbdev's page order (`nbdev-sidebar`), else the file names'
    order = yaml.safe_load(sidebar.read_text())["website"]["sidebar"]["contents"] if sidebar.is_file() else []
    nbs = sorted(NBS.glob("*.ipynb"), key=lambda p: (p.name != README_NB, p.name not in order,
                                                      order.index(p.name) if p.name in order else 0, p.name))
    pages, html_of = [], {}
    for p in nbs:
        nb, meta = presentable(processed(p))
        out = "index.html" if p.name == README_NB else meta.get("output-file") or nbpath2html(Path(p.name)).name
        html_of[p.name] = out
        pages.append((p, nb, out, meta.get("title") or p.stem))
    html_of["../benchmarks/RESULTS.md"] = "RESULTS.html"

    def link(target):
        path, _, frag = target.partition("#")
        return html_of[path] + (f"#{frag}" if frag else "") if path in html_of else target
    nav = [(out, "Home" if out == "index.html" else title) for _, _, out, title in pages] + [("RESULTS.html", "Benchmarks")]
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    trusted = {"clean_html": lambda x: x.decode() if isinstance(x, bytes) else x}   # our notebooks: no sanitising (~2/3 of the time)
    exporter = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True, filters=trusted,
                            extra_loaders=[jinja2.DictLoader({"docs.html.j2": _TEMPLATE})],
                            template_file="docs.html.j2")
    for p, nb, out, title in pages:
        _relink(nb, link)
        nb.metadata["title"] = title
        body, _ = exporter.from_notebook_node(nb, resources={"docs_nav": _nav(nav, out)})
        (dst / out).write_text(_anchors(body))
    page = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell((ROOT / "benchmarks" / "RESULTS.md").read_text())],
                                    metadata={"title": "Benchmarks"})
    body, _ = exporter.from_notebook_node(page, resources={"docs_nav": _nav(nav, "RESULTS.html")})
    (dst / "RESULTS.html").write_text(body)
    return dst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["execute", "readme", "site", "check"])
    args = ap.parse_args(argv)
    if args.command == "execute": execute(); print(f"executed {NBS / README_NB}")
    elif args.command == "readme": render_readme(ROOT); print("wrote README.md and index_files/ from nbs/index.ipynb")
    elif args.command == "site": print(f"wrote {build_site()}")
    else:
        diff = readme_differences()
        if diff:
            print(f"README.md is not what nbs/index.ipynb renders ({', '.join(diff)}): run `python tools/docs.py readme`")
            return 1
        print("README.md matches nbs/index.ipynb")
    return 0


if __name__ == "__main__": sys.exit(main())
