"""The example notebooks: the README's papermill commands verbatim (twice, after the workbench was used), the
workbench notebook, and the Colab/Kaggle notebook on simulated runtimes."""
import json, os, re, shutil, subprocess, sys
from pathlib import Path

import pytest

pm = pytest.importorskip("papermill")
ROOT = Path(__file__).parents[1]


def _readme_block(heading: str) -> str:
    "The first ```bash block after `heading` in the README."
    text = (ROOT / "README.md").read_text()
    return re.search(r"```bash\n(.*?)```", text[text.index(heading):], re.S)[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    "A copy of the repository's files as git has them (a fresh clone) with `.venv` from the set-up, and a workbench run."
    dst = tmp_path_factory.mktemp("clone")
    for f in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines():
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    (dst / ".venv").symlink_to(Path(sys.prefix))
    env = {**os.environ, "PYTHONPATH": str(dst)}
    used = ("import os; from longcat_nb.widgets import Workbench, default_config; wb = Workbench(default_config()); "
            "wb.train.steps.value = '2'; wb.train.start(); st = wb.train.wait(300); assert st['state'] == 'done', st")
    subprocess.run([sys.executable, "-c", used], cwd=dst, env=env, check=True, capture_output=True)
    return dst, env


def _text(nb: dict) -> str:
    "What a saved notebook shows as text: each stream with carriage returns applied, as a notebook renders it."
    out = []
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            if o["output_type"] == "stream": out += [line.split("\r")[-1] for line in "".join(o["text"]).split("\n")]
    return "\n".join(out)


def test_readme_papermill_commands_twice_after_the_workbench(clone):
    dst, env = clone
    block = _readme_block("## Headless: papermill")
    assert "source .venv/bin/activate" in block and block.count("papermill -k python3") == 3
    for run in (1, 2):
        r = subprocess.run(["bash", "-e", "-c", block], cwd=dst, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"run {run}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = dst / "outputs" / "papermill"
    check, train, sample = (json.loads((out / f"{n}.json").read_text()) for n in ("check", "train", "sample"))
    assert check["ok"] and check["samples"] == 8 and check["buckets"] == {"64x64@9": 8}
    assert train["steps"] == 6 and not train["stopped"] and train["videos"]
    assert any(p.endswith("lora_peft.safetensors") for p in train["loras"])
    assert all(Path(p).is_file() for p in train["loras"])
    assert Path(train["loras"][0]).parent == (out / "run").resolve()                 # its own folder, not the workbench's
    assert json.loads((dst / "runs" / "tiny" / "output" / "progress.jsonl").read_text().splitlines()[-1])["event"] == "done"
    assert sample["lora"].endswith("outputs/papermill/run/lora_peft.safetensors") and (sample["frames"], sample["width"]) == (9, 64)
    nb = json.loads((out / "train.ipynb").read_text())
    text = _text(nb)
    assert re.search(r"training: 100%.*6/6", text), text[-2000:]                    # plain text that reads finished
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("name") == "stderr" or "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert "data:video/mp4;base64" in json.dumps(json.loads((out / "sample.ipynb").read_text()))


def test_workbench_notebook_opens(tmp_path):
    pm.execute_notebook(str(ROOT / "examples" / "workbench.ipynb"), str(tmp_path / "wb.ipynb"), kernel_name="python3",
                        progress_bar=False, cwd=str(tmp_path))
    nb = json.loads((tmp_path / "wb.ipynb").read_text())
    assert "application/vnd.jupyter.widget-view+json" in json.dumps(nb["cells"][-1]["outputs"])
    assert (tmp_path / "runs" / "tiny" / "config.json").is_file()


def _code_cells(name):
    nb = json.loads((ROOT / "examples" / f"{name}.ipynb").read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_colab_notebook_parses_and_stops_without_a_gpu(tmp_path):
    import ast, tomllib
    cells = _code_cells("colab")
    assert [c["metadata"].get("tags") for c in cells].count(["parameters"]) == 1
    for c in cells: ast.parse("".join(c["source"]))          # plain Python: no shell or magic lines
    repo = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert f'PACKAGE_SOURCE = "git+{repo}"' in "".join(cells[0]["source"])     # installs this project's own repository
    with pytest.raises(pm.PapermillExecutionError, match="no CUDA GPU"):
        pm.execute_notebook(str(ROOT / "examples" / "colab.ipynb"), str(tmp_path / "colab.ipynb"), kernel_name="python3",
                            parameters={"DATA_DIR": str(tmp_path)}, progress_bar=False, cwd=str(tmp_path))


CARDS = {"L4": ("NVIDIA L4", 22.0, 51.0), "A100": ("NVIDIA A100-SXM4-80GB", 79.2, 83.5),
         "P100": ("Tesla P100-PCIE-16GB", 15.9, 31.4), "T4": ("Tesla T4", 14.7, 51.0)}


@pytest.fixture
def colab(tmp_path, monkeypatch):
    "Run the Colab notebook's cells in order, here, on a pretend runtime; the hub download fails the test if reached."
    import huggingface_hub
    import longcat_nb.widgets as widgets
    from longcat_nb.tiny import make_example_dataset, tiny_checkpoint
    data = make_example_dataset(tmp_path / "ex", n_clips=2, checkpoint=tiny_checkpoint(), i2v=False).parent / "t2v"
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the checkpoint download was reached"))
    monkeypatch.chdir(tmp_path)
    cells = ["".join(c["source"]) for c in _code_cells("colab")]

    def run(card, until=None, **params):
        name, gib, ram = CARDS[card]
        monkeypatch.setattr(widgets, "runtime_info", lambda: {"platform": "colab", "gpus": [(name, gib)], "ram_gib": ram,
                                                              "disk_gib": 150.0})
        ns = {}
        exec(cells[0], ns)
        ns.update(DATA_DIR=str(data), WORK_DIR=str(tmp_path / "work"), CHECKPOINT_DIR=str(tiny_checkpoint()),
                  EXPORT_DIR=str(tmp_path / "drive" / "loras"), **params)
        for src in cells[1:]:
            if until and until in src: break
            exec(src, ns)
        return ns
    return run, data


@pytest.mark.parametrize("card", ["L4", "A100"])
def test_colab_prints_one_plan_per_card(colab, card, capsys):
    from longcat_nb.widgets import card_story, fit_training_settings
    run, _ = colab
    ns = run(card, until="snapshot_download")
    printed = capsys.readouterr().out
    name, gib, ram = CARDS[card]
    expected = card_story(fit_training_settings(gib, ram, name, 16, max_frames=9), name, gib, ram, 500)
    assert expected in printed and "500 steps take about" in expected, printed
    stories = [l for l in printed.splitlines() if "s/step" in l]
    assert stories == [expected], stories                     # one plan per card, no other figures beside it
    assert ns["settings"]["num_frames"] == 9                  # never more frames than the clips have


@pytest.mark.parametrize("card", ["P100", "T4"])
def test_colab_refuses_cards_without_bf16_before_the_download(colab, card):
    run, _ = colab
    with pytest.raises(SystemExit, match=f"this runtime cannot train LongCat-Video: {CARDS[card][0]} has no bf16 units"):
        run(card)


def test_colab_notebook_trains_exports_and_samples(colab, monkeypatch, tmp_path):
    "Every cell on the tiny checkpoint on a pretend A100: trains, copies the LoRA to the drive folder, samples."
    import longcat_nb.widgets as widgets
    run, data = colab
    real = widgets.folder_config                  # the tiny clips' size, and 2 sampling steps (the notebook keeps 40)
    monkeypatch.setattr(widgets, "folder_config", lambda d, c, o, res, frames, *a, **k:
                        real(d, c, o, 64, frames, *a, **{**k, "validation_num_inference_steps": 2}))
    ns = run("A100", MAX_TRAIN_STEPS=2, CHECKPOINTING_STEPS=2, VALIDATION_STEPS=2)
    assert ns["state"]["state"] == "done" and ns["state"]["step"] == 2
    assert ns["output_dir"] == tmp_path / "work" / "output" and ns["cfg"].quantised_base_dir is None
    exported = sorted(p.name for p in ns["output_dir"].glob("lora_*.safetensors"))   # one per lora_export_formats
    assert "lora_peft.safetensors" in exported
    assert sorted(p.name for p in (tmp_path / "drive" / "loras").iterdir()) == exported
    assert ns["sample"].is_file() and ns["sample"].stat().st_size > 0
    config_cell = next("".join(c["source"]) for c in _code_cells("colab") if "quantised_base_dir" in "".join(c["source"]))
    ns["settings"] = {**ns["settings"], "base_model_precision": "int8-quanto"}
    exec(config_cell, ns)                                # an int8 plan keeps the quantised base on the local disk
    assert ns["cfg"].quantised_base_dir == (tmp_path / "work" / "quantised_base_int8-quanto").resolve()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    exec(config_cell, ns)                                # no room for the copy: quantise on every load
    assert ns["cfg"].quantised_base_dir is None
