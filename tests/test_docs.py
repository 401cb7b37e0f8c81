"""The docs: nbs/index.ipynb keeps small outputs and is what README.md is rendered from; the HTML site builds and
opens in headless Chromium without errors, showing index's outputs. Built by tools/docs.py (see its docstring)."""
import functools, http.server, importlib.util, json, os, re, shutil, threading
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("longcat_docs", ROOT / "tools" / "docs.py")
docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs)

INDEX = ROOT / "nbs" / "index.ipynb"
MAX_OUTPUT, MAX_TOTAL = 100_000, 500_000          # bytes of one output, of all outputs, as saved in the notebook
HEAVY = ("video/", "application/vnd.jupyter.widget-state+json", "application/vnd.jupyter.widget-view+json")


def _outputs():
    nb = json.loads(INDEX.read_text())
    return nb, [(c["id"], o) for c in nb["cells"] for o in c.get("outputs", [])]


def test_index_keeps_small_outputs_only():
    nb, outs = _outputs()
    assert nb["metadata"].get("keep_output") is True, "index.ipynb lost `keep_output`: run `python tools/docs.py execute`"
    assert "widgets" not in nb["metadata"], "index.ipynb carries widget state"
    assert outs, "index.ipynb has no outputs: run `python tools/docs.py execute`"
    sizes = {cid: len(json.dumps(o)) for cid, o in outs}
    big = {cid: n for cid, n in sizes.items() if n > MAX_OUTPUT}
    assert not big, f"outputs over {MAX_OUTPUT:,} bytes (cell id: bytes): {big}"
    assert sum(sizes.values()) <= MAX_TOTAL, f"index.ipynb's outputs total {sum(sizes.values()):,} bytes > {MAX_TOTAL:,}"
    for cid, o in outs:
        heavy = [m for m in o.get("data", {}) if m.startswith(HEAVY)]
        assert not heavy, f"cell {cid}: {heavy} — keep videos and widgets out of the docs home"
        assert "data:video" not in json.dumps(o), f"cell {cid}: an inline video"
        assert o["output_type"] != "error" and o.get("name") != "stderr", f"cell {cid}: {o['output_type']} {o.get('name', '')}"
        assert o.get("execution_count") is None, f"cell {cid}: an execution count — run nbdev-clean"
    counted = [c["id"] for c in nb["cells"] if c.get("execution_count") is not None]
    assert not counted, f"cells {counted} keep execution counts — run nbdev-clean"


def test_readme_is_rendered_from_index():
    diff = docs.readme_differences()
    assert not diff, f"README.md differs from nbs/index.ipynb in {diff}: run `python tools/docs.py readme` (after editing the notebook)"


def test_index_copies_no_gpu_figures():
    "Measured GPU figures live in benchmarks/RESULTS.md; the prose links there instead of copying them."
    nb, _ = _outputs()
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    copied = re.findall(r"[^\n]{0,40}\d\s*(?:s/step|GiB|ms a step)[^\n]{0,20}", prose)
    assert not copied, f"index.ipynb's prose quotes GPU figures: {copied} — link benchmarks/RESULTS.md instead"
    assert "](../benchmarks/RESULTS.md)" in prose


# --- the HTML site in a real browser ---------------------------------------------------------------------------------

def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site scripts/test.sh built (`DOCS_SITE`), else one built into a temporary folder, served on 127.0.0.1:
    yields its base URL and folder."""
    built = Path(os.environ.get("DOCS_SITE", "/nonexistent"))
    out = built if (built / "index.html").is_file() else docs.build_site(tmp_path_factory.mktemp("docs") / "_docs")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    handler = functools.partial(Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", out
    server.shutdown()


def test_site_pages_link_only_what_is_built(site):
    _, out = site
    pages = sorted(p.name for p in out.glob("*.html"))
    assert {"index.html", "config.html", "training.html", "RESULTS.html"} <= set(pages), pages
    for name in pages:
        text = (out / name).read_text()
        external = re.findall(r"<(?:script|link|img)\b[^>]*(?:src|href)=\"(https?:[^\"]+)", text)
        assert not external, f"{name} loads {external}: the site must work offline"
        for href in re.findall(r"<a [^>]*href=\"([^\"#:]+\.html)", text):
            assert (out / href).is_file(), f"{name} links {href}, which was not built"
        ids = set(re.findall(r'\bid="([^"]+)"', text))
        dangling = sorted({f for f in re.findall(r'href="#([^"]+)"', text) if f not in ids})
        assert not dangling, f"{name} links #{dangling}, which it does not hold"


@pytest.fixture(scope="module")
def browser():
    chromium, driver = _chromium()
    if not (chromium and driver):
        pytest.skip("chromium or chromedriver is not installed (scripts/test.sh installs them: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1800"): opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    yield d
    d.quit()


def _open(d, url):
    "Load `url`; fail on console errors (JS errors, resources that failed to load) and on images that did not load."
    d.get_log("browser")                              # drop what earlier pages logged
    d.get(url)
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"{url}: console errors {[e['message'] for e in errors]}"
    failed = d.execute_script("return performance.getEntriesByType('resource')"
                              ".filter(r => r.responseStatus >= 400).map(r => r.name)")
    assert not failed, f"{url}: resources that failed to load: {failed}"
    broken = d.execute_script("return [...document.images].filter(i => !i.complete || i.naturalWidth == 0)"
                              ".map(i => i.src.slice(0, 80))")
    assert not broken, f"{url}: images that did not load: {broken}"
    return d.find_element("tag name", "body").text


def test_site_in_a_browser(site, browser):
    from selenium.webdriver.common.by import By
    base, _ = site
    text = _open(browser, f"{base}/index.html")
    assert browser.title == "longcat_nb"
    for seen in ("A tour on the tiny default", "OK: 8 usable samples", "tiny default", "swapped blocks", "steps, loss",
                 "Config reference", "pretrained_model_name_or_path"):
        assert seen in text, f"index.html does not show {seen!r}"
    shown = browser.execute_script("return [...document.images].filter(i => i.src.startsWith('data:image/png') && "
                                   "i.naturalWidth > 100 && i.getBoundingClientRect().height > 50).length")
    assert shown >= 2, f"index.html shows {shown} figures; expected the bucket histogram and the loss curve"
    table = browser.find_elements(By.XPATH, "//table[.//th[normalize-space()='tiny default']]")
    assert table and table[0].is_displayed(), "the tour's config table is not visible"
    links = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "nav.docs-nav a")}
    assert links.get("Config", "").endswith("/config.html") and links.get("Benchmarks", "").endswith("/RESULTS.html"), links
    for page, heading in (("config.html", "Config"), ("training.html", "Training"), ("RESULTS.html", "Benchmarks")):
        text = _open(browser, f"{base}/{page}")
        assert browser.find_element(By.TAG_NAME, "h1").text.strip().startswith(heading), page
        assert len(text) > 2000, f"{page} shows almost nothing"
    browser.find_element(By.LINK_TEXT, "Home").click()
    assert browser.title == "longcat_nb"
