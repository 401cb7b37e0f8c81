"The CLI face of the service: `check` refuses what cannot train, and a training run prints none of the third-party noise."
import json, shutil, subprocess, sys

import pytest

from longcat_nb.tiny import make_example_dataset, tiny_checkpoint

CLI = [sys.executable, "-c", "import sys; from longcat_nb.cli import main; sys.exit(main())"]
NOISE = ("Failed to load", "register_constant()", "Unable to import `torchao` Tensor objects")


def _cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


def test_check_fails_when_nothing_can_train(tmp_path):
    (tmp_path / "empty.json").write_text(json.dumps({"pretrained_model_name_or_path": str(tiny_checkpoint())}))
    r = _cli("check", "--config", tmp_path / "empty.json")
    assert r.returncode == 1 and "NOT OK: 0 usable samples" in r.stdout and "nothing to train" in r.stdout, r.stdout + r.stderr
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(), ckpt)
    (ckpt / "text_encoder" / "model-00003-of-00003.safetensors").unlink()     # an interrupted download
    cfg = make_example_dataset(tmp_path / "data", n_clips=1, checkpoint=ckpt)
    r = _cli("check", "--config", cfg)
    assert r.returncode == 1 and "model-00003-of-00003.safetensors is missing" in r.stdout, r.stdout + r.stderr
    assert "fetch the checkpoint again" in r.stdout
    report = json.loads(_cli("check", "--config", cfg, "--json").stdout)
    assert any(p["rule"] == "missing-dir" and p["dataset"] == "checkpoint" for p in report["problems"]), report


def test_training_prints_our_warnings_but_no_third_party_noise(tmp_path):
    cfg = make_example_dataset(tmp_path / "data", n_clips=1, checkpoint=tiny_checkpoint(), max_train_steps=1,
                               validation_steps=0, aspect_bucket_alignment=32)     # forced to 64: our own warning
    r = _cli("train", "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert not [n for n in NOISE if n in r.stderr + r.stdout], r.stderr
    assert "aspect_bucket_alignment" in r.stderr, r.stderr


def _bench(name: str):
    "The benchmark script `benchmarks/<name>.py` as a module."
    import importlib.util
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _rendered(kind: str, result, tmp_path) -> str:
    "The table `benchmarks/tables.py` renders from the benchmark's JSON `result` (saved as `{kind}_cpu_<date>.json`)."
    from unittest import mock
    tables = _bench("tables")
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    shutil.copy(result, results / f"{kind}_cpu_2026-12-05.json")
    with mock.patch.object(tables, "RESULTS", results):
        table = getattr(tables, kind)()
    assert f"{kind}_cpu_2026-12-05.json" in table, table
    return table


def test_sample_tab_benchmark_runs_on_the_tiny_checkpoint(capsys, tmp_path):
    """benchmarks/bench_sample_tab.py, which the H200 runs at full size: two clicks of the distilled preview, one
    pipeline load, both timed, with provenance; a checkpoint without the distilled LoRA gets a random one."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(), ckpt)
    (ckpt / "lora" / "cfg_step_lora.safetensors").unlink()                      # as fullscale_e2e.py's checkpoint
    out = tmp_path / "tab.json"
    result = _bench("bench_sample_tab").main([str(ckpt), "--size", "64x48", "--frames", "5", "--steps", "2",
                                             "--distilled", "--with-random-distilled-lora", "--json", str(out)])
    assert result["pipeline_loads"] == 1 and result["first_click_s"] > 0 and result["second_click_s"] > 0, result
    assert (ckpt / "lora" / "cfg_step_lora.safetensors").is_file() and result["distilled"]
    assert {"date", "commit", "gpu", "torch", "command"} <= result.keys()       # what benchmarks/tables.py asks for
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1]) == result == json.loads(out.read_text())   # one JSON line
    assert "| second click (the same pipeline) |" in _rendered("sample_tab", out, tmp_path)


def test_sample_cli_benchmark_runs_on_the_tiny_checkpoint(tmp_path):
    "benchmarks/bench_sample_cli.py: one whole `longcat-nb sample` process per variant, timed, with provenance."
    result = _bench("bench_sample_cli").main([str(tiny_checkpoint()), "--size", "64x48", "--frames", "5",
                                             "--variants", "distilled", "--json", str(tmp_path / "cli.json")])
    (row,) = result["rows"]
    assert row["variant"] == "distilled" and row["rc"] == 0 and row["video_bytes"] > 0 and row["wall_s"] > 0, row
    stages = row["to_denoise_s"], row["denoise_s"], row["decode_write_s"]   # the command's own marks were read
    assert all(s >= 0 for s in stages) and sum(stages) == pytest.approx(row["wall_s"], abs=0.3), row
    reads = [(1.0, "Loading\r  0%| | 0/16 ["), (2.0, "00:00]\r 94%| | 15/16 [00:09]denoised; deco"), (3.5, "ding\n")]
    assert _bench("bench_sample_cli").stages(reads, 5.0) == dict(to_denoise_s=1.0, denoise_s=1.0, decode_write_s=3.0)
    reads[1:1] = [(1.6, "00:00]\r  6%| | 1/16 [00:00<00:09]")]                    # the bar after the first step
    assert _bench("bench_sample_cli").stages(reads, 5.0)["first_step_s"] == 0.6
    assert json.loads((tmp_path / "cli.json").read_text()) == result and result["commit"]
    table = _rendered("sample_cli", tmp_path / "cli.json", tmp_path)
    assert f"| distilled | cpu | {result['commit']} | --distilled | — |" in table, table
