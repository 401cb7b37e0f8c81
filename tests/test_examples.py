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


def _code_cells(name):
    nb = json.loads((ROOT / "examples" / f"{name}.ipynb").read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_colab_notebook_parses_and_stops_without_a_gpu(tmp_path):
    import ast
    cells = _code_cells("colab")
    assert [c["metadata"].get("tags") for c in cells].count(["parameters"]) == 1
    for c in cells: ast.parse("".join(c["source"]))          # plain Python: no shell or magic lines
    with pytest.raises(pm.PapermillExecutionError, match="no CUDA GPU"):
        pm.execute_notebook(str(ROOT / "examples" / "colab.ipynb"), str(tmp_path / "colab.ipynb"), kernel_name="python3",
                            parameters={"DATA_DIR": str(tmp_path)}, progress_bar=False, cwd=str(tmp_path))


def test_colab_notebook_cells_run_on_a_pretend_gpu(tmp_path, monkeypatch):
    "Every cell after the install, on the tiny checkpoint, with the machine reported as an A100 80GB (no download: the checkpoint is there)."
    import longcat_nb.widgets as widgets
    from longcat_nb.tiny import make_example_dataset, tiny_checkpoint
    data = make_example_dataset(tmp_path / "ex", n_clips=2, checkpoint=tiny_checkpoint(), i2v=False).parent / "t2v"
    monkeypatch.setattr(widgets, "runtime_info", lambda: {"platform": "local", "gpus": [("NVIDIA A100-SXM4-80GB", 79.2)],
                                                          "ram_gib": 83.5, "disk_gib": 150.0})
    real = widgets.folder_config                  # 2 sampling steps for the validation video and the sample (the notebook keeps 40)
    monkeypatch.setattr(widgets, "folder_config", lambda *a, **k: real(*a, validation_num_inference_steps=2, **k))
    monkeypatch.chdir(tmp_path)
    cells = ["".join(c["source"]) for c in _code_cells("colab")]
    ns = {}
    exec(cells[0], ns)
    ns.update(DATA_DIR=str(data), CHECKPOINT_DIR=str(tiny_checkpoint()), MAX_TRAIN_STEPS=2, CHECKPOINTING_STEPS=2, VALIDATION_STEPS=2)
    for i, src in enumerate(cells[1:], 1):
        exec(src, ns)
        if "fit_training_settings(" in src:
            assert ns["settings"]["resolution"] == 632 and ns["settings"]["num_frames"] == 93
            ns["settings"] = {"resolution": 64, "num_frames": 9, "estimated_peak_gib": 0}   # the tiny clips' size
            assert ns["memory"] == {"base_model_precision": "bf16", "musubi_blocks_to_swap": 0, "activation_offload": False, "ffn_chunks": 1}
    assert ns["result"].steps == 2 and ns["output_dir"] == data.parent / "longcat_output"
    assert ns["sample"].is_file() and ns["lora"].endswith("lora_peft.safetensors")
    assert ns["cfg"].quantised_base_dir is None                          # a bf16 plan keeps no quantised copy
    config_cell = next(c for c in cells if "quantised_base_dir" in c)
    ns["memory"] = {"base_model_precision": "int8-quanto", "musubi_blocks_to_swap": 0, "activation_offload": False, "ffn_chunks": 1}
    exec(config_cell, ns)                                                # an int8 plan keeps it beside the outputs
    assert ns["cfg"].quantised_base_dir == (ns["output_dir"] / "quantised_base_int8-quanto").resolve()
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    exec(config_cell, ns)                                                # no room for the copy: quantise on every load
    assert ns["cfg"].quantised_base_dir is None
