"""The workbench inside a real Jupyter kernel (nbclient + ipykernel), where an exception raised in `with output:` is
printed by the widget and swallowed: each tab's error path shows one readable line in its status area, the previous
result is gone, the traceback is collapsed, and nothing reaches the cell's outputs as an error or a stderr stream."""
import html, json, re, textwrap

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

SETUP = """
import json, shutil
from pathlib import Path
import comm
# No frontend here: widget models stay in the kernel. (A workbench opens over a thousand comms, more messages than
# ZMQ queues by default — on a busy machine the kernel's "idle" could be dropped and the client wait forever.) So
# what a view displays, in its output area or not, reaches this cell's outputs, where it is checked.
comm.create_comm = comm.DummyComm
from longcat_nb.cli import main
from longcat_nb.tiny import make_example_dataset, tiny_checkpoint
from longcat_nb.widgets import Workbench
root = Path({root!r})
cfg = make_example_dataset(root / "data", n_clips=1, checkpoint=tiny_checkpoint(), max_train_steps=2, validation_steps=0,
                           checkpointing_steps=2)
assert main(["train", "--config", str(cfg)]) == 0          # output_dir now holds a finished run
wb = Workbench(cfg)
def report(*views):
    print(json.dumps({{type(v).__name__: {{"status": v.status.value, "result": getattr(v, "result", None) and v.result.value}}
                      for v in views}}))
"""
CELLS = {
    "cache": """
wb.cache.button.click()                       # a good build first: its summary is the "previous result"
assert "cache OK" in wb.cache.result.value
wb.form.inputs["pretrained_model_name_or_path"].value = str(root / "no-checkpoint")
wb.cache.button.click()
report(wb.cache)
wb.form.inputs["pretrained_model_name_or_path"].value = str(tiny_checkpoint())
""",
    "sample_size": """
wb.sample.prompt.value, wb.sample.size.value = "a red ball", "480p"
wb.sample.button.click()
report(wb.sample)
""",
    "sample_image": """
wb.sample.size.value, wb.sample.image.value = "64x48", "missing.png"   # the kernel runs in root
wb.sample.button.click()
report(wb.sample)
""",
    "sample_frames": """
wb.sample.image.value, wb.sample.frames.value = "", "10"
wb.sample.button.click()
report(wb.sample)
""",
    "train": """
wb.train.start_button.click()
assert wb.train.proc is None
report(wb.train)
""",
    "nullable_bool": """
from longcat_nb.widgets import ConfigForm
default = wb.form.inputs["compile_transformer"].value
wb.form.inputs["compile_transformer"].value = False
saved = wb.form.save(root / "eager" / "config.json")
stored = json.loads(saved.read_text())["compile_transformer"]
print(json.dumps({"default": default, "stored": stored, "reloaded": ConfigForm(saved).inputs["compile_transformer"].value}))
wb.form.inputs["compile_transformer"].value = None
""",
    "missing_config": """
nowhere = Workbench(root / "nowhere" / "config.json")
nowhere.check.button.click()
print(json.dumps({"form": {"status": nowhere.form.status.value}, "check": {"status": nowhere.check.status.value},
                  "written": (root / "nowhere").exists()}))
""",
}
EXPECTED = {
    "cache": ("CacheView", "directory not found — point it at the checkpoint folder"),
    "sample_size": ("SampleView", 'Sample tab: size = "480p": expected "WIDTHxHEIGHT"'),
    "sample_image": ("SampleView", "start image missing.png: no such file — give the path of a PNG or JPEG start frame"),
    "sample_frames": ("SampleView", "Sample tab: frames = 10: (frames - 1) % 4 must be 0"),
}


def one_line(status_html: str) -> str:
    "The text of the status's bold first line; fails unless it is a single line and the rest sits in a closed <details>."
    m = re.match(r"<div style='color:#[0-9a-f]{6};font-weight:bold[^']*'>(.*?)</div>(.*)$", status_html, re.S)
    assert m, status_html
    line, rest = html.unescape(m[1]), m[2]
    assert "\n" not in line and "Traceback" not in line, line
    assert rest == "" or (rest.startswith("<details>") and "<details open" not in rest), rest
    return line


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    root = tmp_path_factory.mktemp("kernel")
    cells = [textwrap.dedent(SETUP.format(root=str(root)))] + [textwrap.dedent(c) for c in CELLS.values()]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(root)}}).execute()
    return root, dict(zip(["setup", *CELLS], nb.cells))


def _printed(cell) -> dict:
    "The JSON the cell printed last; fails on an error or a stderr stream among its outputs (its views' included)."
    bad = [o for o in cell.outputs if o.output_type == "error" or (o.output_type == "stream" and o.name == "stderr")]
    assert not bad, bad                                     # nothing escaped: no error, no red stderr block
    text = "".join(o.text for o in cell.outputs if o.output_type == "stream")
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(EXPECTED))
def test_error_paths_show_one_line(executed, name):
    view, says = EXPECTED[name]
    got = _printed(executed[1][name])[view]
    assert says in one_line(got["status"]), got["status"]
    assert got["result"] == ""                              # the previous result is gone


def test_used_output_dir_offers_the_ways_on(executed):
    got = _printed(executed[1]["train"])["TrainView"]
    line = one_line(got["status"])
    assert "already holds a run (finished at step 2)" in line and "resume it, start in a new folder" in line, line


def test_missing_config_is_offered_not_written(executed):
    got = _printed(executed[1]["missing_config"])
    assert "does not exist yet" in got["form"]["status"] and "press Create" in got["form"]["status"]
    assert "the config file does not exist yet — fill in the Config tab and press Create" in one_line(got["check"]["status"])
    assert got["written"] is False


def test_setup_cell_is_quiet(executed):
    "Training in the kernel printed no third-party noise."
    text = "".join(o.get("text", "") for o in executed[1]["setup"].outputs)
    assert "Failed to load" not in text and "register_constant" not in text and "Unable to import" not in text, text


def test_nullable_boolean_round_trips_in_the_form(executed):
    "`compile_transformer` (null: auto) shows as auto, and a choice of false is saved and read back as false."
    eq = _printed(executed[1]["nullable_bool"])
    assert eq == {"default": None, "stored": False, "reloaded": False}, eq
