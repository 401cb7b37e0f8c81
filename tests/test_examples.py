"The example notebooks, headless with papermill on their default parameters (the embedded tiny default), and their JSON figures."
import json
from pathlib import Path

import pytest

pm = pytest.importorskip("papermill")
ROOT = Path(__file__).parents[1]


def _run(name, cwd, **parameters):
    out = cwd / "outputs"
    out.mkdir(exist_ok=True)
    pm.execute_notebook(str(ROOT / "examples" / f"{name}.ipynb"), str(out / f"{name}.ipynb"), kernel_name="python3",
                        parameters=parameters, progress_bar=False, cwd=str(cwd))
    return json.loads((out / f"{name}.json").read_text()), json.loads((out / f"{name}.ipynb").read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("examples")


def test_check_notebook(workdir):
    figures, nb = _run("check", workdir)
    assert figures["ok"] and figures["samples"] == 8 and figures["errors"] == 0
    assert figures["buckets"] == {"64x64@9": 8} and Path(figures["config"]) == workdir / "runs" / "tiny" / "config.json"
    html = json.dumps(nb)
    assert "image/png" in html and html.count("data:video/mp4;base64") >= 4


def test_train_then_sample_notebooks(workdir):
    figures, _ = _run("train", workdir, max_train_steps=6)
    assert figures["steps"] == 6 and not figures["stopped"] and len(figures["loras"]) == 3 and figures["videos"]
    assert all(Path(p).is_file() for p in figures["loras"] + figures["videos"])
    figures, nb = _run("sample", workdir)          # "auto" picks the LoRA the training notebook left
    assert figures["lora"] and figures["lora"].endswith("lora_peft.safetensors")
    assert (figures["frames"], figures["width"], figures["height"]) == (9, 64, 64) and Path(figures["output"]).is_file()
    assert "data:video/mp4;base64" in json.dumps(nb)


def test_workbench_notebook_opens(tmp_path):
    pm.execute_notebook(str(ROOT / "examples" / "workbench.ipynb"), str(tmp_path / "wb.ipynb"), kernel_name="python3",
                        progress_bar=False, cwd=str(tmp_path))
    nb = json.loads((tmp_path / "wb.ipynb").read_text())
    assert "application/vnd.jupyter.widget-view+json" in json.dumps(nb["cells"][-1]["outputs"])
    assert (tmp_path / "runs" / "tiny" / "config.json").is_file()
