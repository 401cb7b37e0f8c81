"""Measured tables, rendered from the benchmarks' JSON results (benchmarks/results/) into the Markdown files and the
chapters' Markdown cells that show them, between `<!-- table:NAME:start -->` and `<!-- table:NAME:end -->` markers,
so no figure is copied by hand. Each results file records its date, commit, GPU and torch ("unknown" where they were
not recorded); files transcribed from an earlier document say so in their `source`.

    python benchmarks/tables.py                  # rewrite every table in place (then `nbdev-clean` for the notebooks)
    python benchmarks/tables.py --check          # exit 1 when a table differs from its JSON (tests/test_tables.py)
    python benchmarks/tables.py --results DIR    # read the results from DIR instead
"""
import json, re, statistics, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
PROVENANCE = ("date", "commit", "torch")  # and the GPU, as `gpu` or (older files) `device`

# Arithmetic, not measured: FLOPs at 832×480×93 (37,440 tokens), SPEC §9; they turn bench_model's times into rates.
PFLOP = {"forward": 1.97, "lora_step": 7.4}
DEPTH = 48                                                       # the released model's blocks (SPEC)


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (RESULTS / name).read_text().splitlines() if line.strip()]


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _gpu(d: dict) -> str: return d.get("gpu") or d["device"]


def _from(d: dict, name: str) -> str:
    "Where a table's figures come from: GPU, torch, date, commit, the file (and, if transcribed, from what)."
    commit = d["commit"] + (f", results committed in {d['results_committed_in']}" if "results_committed_in" in d else "")
    source = f"; {d['source']}" if "source" in d else ""
    return f"({_gpu(d)}, torch {d['torch']}; run {d['date']}, commit {commit}; `benchmarks/results/{name}`{source}.)"


def _pct(new: float, old: float) -> str: return f"{(new / old - 1) * 100:+.0f}%".replace("-", "−")


def _newest(pattern: str) -> list[str]:
    "The names of results files matching `pattern`, oldest first: by the date in the name (`kind_gpu_YYYY-MM-DD…`)."
    def dated(name: str) -> tuple[str, str]:
        m = re.search(r"\d{4}-\d{2}-\d{2}", name)
        return (m[0] if m else "", name)
    return sorted((p.name for p in RESULTS.glob(pattern)), key=dated)


def _pending(pattern: str, command: str) -> str:
    "What a table shows before its first run: the command, and the results file it waits for."
    return "\n".join(_table(["not measured yet", "command (a GPU)"], [["—", f"`{command}`"]])
                      + ["", f"(No `benchmarks/results/{pattern}` yet: the command's JSON goes there, named with the GPU "
                             "and date, then `python benchmarks/tables.py`.)"])


def _newest_per_gpu(pattern: str, key, keep=lambda r: True) -> list[dict]:
    """The rows of every file matching `pattern` that `keep` accepts, the newest per GPU and `key(row)` (a later file's
    row replacing an earlier one's), each with its file's `gpu`, `commit` and name (`file`); the H200's first."""
    rows = {}
    for name in _newest(pattern):
        d = _json(name)
        for r in d["rows"]:
            if keep(r):
                rows[_gpu(d), key(r)] = {**r, "gpu": _gpu(d), "commit": d["commit"], "file": name}
    return sorted(rows.values(), key=lambda r: (r["gpu"] != "NVIDIA H200", r["gpu"]))


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def transformer() -> str:
    "The full-size transformer at 832×480×93 (benchmarks/bench_model.py)."
    name = "bench_model_h200.json"
    d = _json(name)
    fwd, cfg2, cfg, lora = d["forward"], d["cfg_batch2_forward"], d["cfg_step"], d["lora_step"]
    rows = [[f"forward, no grad ({PFLOP['forward']} PFLOP)",
             f"{fwd['median_s']:.2f} s (≈ {PFLOP['forward'] * 1e3 / fwd['median_s']:.0f} TFLOP/s)", len(fwd["times_s"]),
             f"{fwd['peak_gib']:.1f} GiB"],
            ["CFG sampling step, batch-2 forward", f"{cfg2['median_s']:.2f} s", len(cfg2["times_s"]), f"{cfg2['peak_gib']:.1f} GiB"],
            ["CFG sampling step, 2 × forward", f"{cfg['two_forwards_s']:.2f} s", "—", "—"],
            [f"{cfg['steps']}-step CFG video (projected: {cfg['steps']} × 2 forwards)", f"{cfg['sampling_estimate_s']:.0f} s", "—", "—"],
            [f"LoRA step: rank 128 on qkv/proj/q_linear/kv_linear/w1/w2/w3 ({lora['trainable_params'] / 1e6:.0f}M trainable), "
             f"per-block checkpointing, MSE, backward, AdamW (≈ {PFLOP['lora_step']} PFLOP)",
             f"{lora['median_s']:.2f} s (≈ {PFLOP['lora_step'] * 1e3 / lora['median_s']:.0f} TFLOP/s)", len(lora["times_s"]),
             f"{lora['peak_gib']:.1f} GiB"]]
    return "\n".join(_table(["what", "median", "repeats", "peak memory"], rows)
                     + ["", f"Weights {d['weights_gib']:.1f} GiB, {d['params'] / 1e9:.1f}B parameters; outputs and the loss "
                            f"{'were' if d['output_finite'] and lora['loss_finite'] else 'were NOT'} finite. PFLOP figures "
                            "are arithmetic (SPEC §9). " + _from(d, name)])


def vae() -> str:
    "The Wan 2.1 VAE on a 93-frame 832×480 clip (benchmarks/bench_vae.py)."
    name = "bench_vae_h200.json"
    d = _json(name)
    rows = [[what.replace("_plain", "").replace("_", ", "), f"{r['first_s']:.2f} s", f"{r['median_s']:.2f} s", f"{r['peak_gib']:.2f} GiB"]
            for what in ("encode_plain", "decode_plain", "encode_tiled", "decode_tiled") for r in [d[what]]]
    return "\n".join(_table(["what", "first call", f"median of {d['repeats']}", "peak memory"], rows) + ["", _from(d, name)])


def sampling() -> str:
    "Sampling steps of the full-size transformer through the pipeline (benchmarks/bench_sampling.py)."
    name = "bench_sampling_h200.json"
    d = _json(name)
    cfg, plain = d["cfg"], d["no_cfg"]
    rows = [["with CFG (guidance 4.0, CFG-Zero*, batch-2 forward)", f"{cfg['median_s']:.2f} s", f"{cfg['peak_gib']:.1f} GiB"],
            ["without CFG (guidance 1.0)", f"{plain['median_s']:.2f} s", f"{plain['peak_gib']:.1f} GiB"],
            [f"projected 40-step CFG video (40 × {cfg['median_s']:.2f} s)", f"{d['video_40_steps_cfg_s']:.0f} s", ""],
            [f"projected 16-step distilled video (16 × {plain['median_s']:.2f} s, cfg_step_lora merged or not: LoRA cost "
             "not included)", f"{d['video_16_steps_distilled_s']:.0f} s", ""]]
    return "\n".join(_table(["what", f"median per step (of {len(cfg['steps_s'])})", "peak memory"], rows) + ["", _from(d, name)])


def compile_() -> str:
    "Compiled against eager transformer blocks (benchmarks/bench_compile.py; eager LoRA step from bench_model.py)."
    name, model = "bench_compile_h200.json", "bench_model_h200.json"
    d, m = _json(name), _json(model)
    ef, cf, cl, el = d["eager_forward"], d["compiled_forward"], d["compiled_lora_step"], m["lora_step"]
    rows = [[f"forward, no grad (median of {len(cf['times_s'])})", f"{ef['median_s']:.2f} s",
             f"{cf['median_s']:.2f} s ({_pct(cf['median_s'], ef['median_s'])})",
             f"first compiled call {d['compiled_forward_first_call_s']} s"],
            [f"LoRA step, rank 128, checkpointing, AdamW (median of {len(cl['times_s'])})",
             f"{el['median_s']:.2f} s (bench_model run)",
             f"{cl['median_s']:.2f} s ({_pct(cl['median_s'], el['median_s'])}), peak {cl['peak_gib']:.1f} GiB",
             f"{d['compiled_lora_total_s']:.0f} s for the whole LoRA part incl. compiling"]]
    kinds = list(dict.fromkeys([*d["eager_profile_ms"], *d["compiled_profile_ms"]]))
    profile = [[k, f"{d['eager_profile_ms'].get(k, 0):,.1f}" if k in d["eager_profile_ms"] else "—",
                f"{d['compiled_profile_ms'][k]:,.1f}" if k in d["compiled_profile_ms"] else "—"] for k in kinds]
    return "\n".join(_table(["what", "eager", "compiled", ""], rows)
                     + ["", "CUDA kernel time of one forward by kind, ms:", ""]
                     + _table(["kind", "eager", "compiled"], profile)
                     + ["", f"Largest absolute difference between eager and compiled outputs: "
                            f"{d['compiled_vs_eager_max_abs_diff']:.3f} at an output range of ±{d['ref_abs_max']:.1f}.",
                        "", _from(d, name) + " " + _from(m, model)])


def step_floor() -> str:
    """What a dense LoRA step at 832×480×93 cannot go below on this GPU (issue 22): attention kept (not recomputed), so
    its fwd+bwd once per block; the frozen base's matmuls three times (forward, recompute, input gradient)."""
    names = "bench_attention_h200.json", "bench_compile_h200.json", "train_h200_2026-12-04.json"
    a, c, t = map(_json, names)
    attn = DEPTH * a["model/cudnn"]["fwd_bwd_ms"] / 1e3
    attn_fwd = DEPTH * a["model/cudnn"]["fwd_ms"] / 1e3
    matmul = 3 * c["eager_profile_ms"]["matmul"] / 1e3
    eager, compiled = (next(r["s_per_step"] for r in t["rows"] if r["what"].startswith(w)) for w in ("eager", "compile"))
    rows = [[f"self-attention fwd+bwd, {DEPTH} blocks (cuDNN SDPA, the model's q/k/v layout; kept, so run once)",
             f"{DEPTH} × {a['model/cudnn']['fwd_bwd_ms']:.1f} ms", f"{attn:.2f} s"],
            ["the base weights' matmuls: forward, recompute, input gradient",
             f"3 × {c['eager_profile_ms']['matmul']:,.0f} ms (one forward's matmul kernels)", f"{matmul:.2f} s"],
            ["**floor**: the two above and nothing else (no elementwise, norms, RoPE, LoRA, optimizer)", "",
             f"**{attn + matmul:.2f} s**"],
            ["the 10.0 s goal minus the floor: left for everything else", "", f"{10.0 - attn - matmul:+.2f} s".replace("-", "−")],
            ["measured: eager step, attention kept", "`longcat-nb train`", f"{eager:.2f} s"],
            ["estimate: compiled blocks keeping attention", f"measured compiled step {compiled:.2f} s (attention "
             f"recomputed) − {DEPTH} attention forwards", f"{compiled - attn_fwd:.2f} s"]]
    return "\n".join(_table(["part of the step", "from", "time"], rows)
                     + [""] + [_from(d, n) for d, n in zip((a, c, t), names)])


def attention() -> str:
    "SDPA backends at the model's self-attention shape (benchmarks/bench_attention.py)."
    name = "bench_attention_h200.json"
    d = _json(name)
    rows = [[*key.split("/"), f"{r['fwd_ms']:.1f}", f"{r['fwd_tflops']:.0f}", f"{r['fwd_bwd_ms']:.1f}"]
            for key, r in d.items() if isinstance(r, dict)]
    return "\n".join(_table(["q, k, v layout", "backend", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms"], rows)
                     + ["", f"q, k, v [1, {d['heads']}, {d['tokens']:,}, {d['dim']}] bf16; `model_auto` = the model's "
                            "`attention(..., \"auto\")`. " + _from(d, name)])


def fsdp() -> str:
    "FSDP2 on two GPUs against one, tiny checkpoint (benchmarks/fsdp_smoke.sh)."
    name = "fsdp_2xh200_2026-11-21.json"
    d = _json(name)
    diff = d["lora_rel_frobenius_diff"]
    rows = [["losses, 1 GPU", ", ".join(f"{x:.5f}" for x in d["losses_1gpu"])],
            ["losses, FSDP on 2 GPUs", ", ".join(f"{x:.5f}" for x in d["losses_fsdp_2gpu"])],
            ["LoRA tensors, relative Frobenius difference",
             f"mean {diff['mean'] * 100:.1f}%, max {diff['max'] * 100:.1f}% (bf16 + Adam's sign-like first steps)"],
            ["FSDP resumed from checkpoint-2", d["resumed_from_checkpoint_2"]]]
    return "\n".join(_table(["what", "result"], rows) + ["", _from(d, name)])


def bsa() -> str:
    "Block-sparse attention against dense, FlexAttention kernel (benchmarks/bench_bsa.py --block)."
    name = "bench_bsa.json"
    d = _json(name)
    grids = [r for r in d["rows"] if "what" not in r]
    size = {39936: "832×512×93", 84480: "1280×704×93"}
    rows = [[f"{r['tokens']:,} ({'×'.join(map(str, r['grid']))}, {size.get(r['tokens'], '?')})",
             f"{r['dense_fwd_ms']:.1f}", f"{r['dense_fwdbwd_ms']:.1f}", f"{r['bsa_fwd_ms']:.1f}", f"{r['bsa_fwdbwd_ms']:.1f}",
             f"{r['speedup_fwd']:.1f}× / {r['speedup_fwdbwd']:.1f}×",
             f"{r['kernel_fwd_ms']:.1f} / {r['kernel_fwdbwd_ms']:.1f} ({r['kernel_speedup_fwdbwd']:.1f}×)",
             f"{r['select_ms']:.1f}", f"{r['reorder_qkv_ms']:.1f}"] for r in grids]
    block = next(r for r in d["rows"] if r.get("what") == "full-size block fwd+bwd")
    diffs = ", ".join(f"{r['diff_structured']:.2f} ({r['tokens']:,})" for r in grids)
    randoms = ", ".join(f"{r['diff_random']:.2f}" for r in grids)
    return "\n".join(
        _table(["tokens", "dense fwd", "dense fwd+bwd", "whole path fwd", "whole path fwd+bwd", "speed-up fwd / fwd+bwd",
                "kernel alone fwd / fwd+bwd", "selection", "reorder q,k,v"], rows)
        + ["", f"ms, median of {d['repeats']}; q, k, v [1, {d['heads']}, N, {d['dim']}] bf16, sparsity {d['sparsity']}, "
               f"FlexAttention tiles {d['kernel_options']['fwd_BLOCK_M']}×{d['kernel_options']['fwd_BLOCK_N']}. "
               f"One full-size block (hidden 4096, random weights, bf16, frozen), fwd+bwd w.r.t. its input at "
               f"{'×'.join(map(str, block['grid']))} tokens: dense {block['sdpa_ms']:.1f} ms (peak {block['sdpa_peak_gib']:.1f} "
               f"GiB), block-sparse {block['bsa_ms']:.1f} ms (peak {block['bsa_peak_gib']:.1f} GiB). Sparse vs dense "
               f"output, relative L2: {diffs} on structured inputs, {randoms} on plain random ones. " + _from(d, name)])


def bsa_kernels() -> str:
    "Our Triton kernel against FlexAttention, fwd+bwd speed-up over dense cuDNN (benchmarks/bench_bsa.py)."
    name = "bsa_kernels_h200_2026-12-04.json"
    d = _json(name)
    rows = [[f"{r['tokens']:,} ({r['size'].replace('x', '×')})", f"{r['whole_path_flex']:.2f}×", f"{r['whole_path_triton']:.2f}×",
             f"{r['triton_kernel_1_chunk_per_step']:.2f}×", f"{r['triton_kernel_2_chunks_per_step']:.2f}×"] for r in d["rows"]]
    return "\n".join(_table(["tokens", "whole path, FlexAttention", "whole path, Triton",
                             "Triton kernel alone, 1 key chunk/step", "2 chunks/step"], rows)
                     + ["", f"{d['what']}; `{d['command']}`. " + _from(d, name)])


def _variant(row: dict) -> str:
    return "bf16 resident" if not row["extra"] else ", ".join(f"{k}: {v}" for k, v in row["extra"].items())


def memory_settings() -> str:
    "`longcat-nb train` under the first memory settings, 2026-11-30 (benchmarks/bench_memory.py rows)."
    name = "bench_memory_h200.jsonl"
    rows = _rows(name)
    base = next(r["train_step_s"][-1] for r in rows if r["variant"] == "bf16")
    body = []
    for r in rows:
        if r["train_rc"] == 0:
            s = r["train_step_s"][-1]
            body.append([_variant(r), f"{s:.2f}", f"{s / base:.2f}", f"{r['train_peak_gib']:.1f}", f"{r['peak_host_rss_gib']:.1f}"])
        else:
            error = r["train_tail"].strip().splitlines()[-1].split(": ", 1)[-1].split(" — ")[0]
            body.append([_variant(r), f"refused: \"{error}\"", "—", "—", "—"])
    ran = {r["variant"] for r in rows}
    asked = re.search(r"--only (\S+)", rows[0]["command"])[1].split(",")
    body += [[v, "not run", "", "", ""] for v in asked if v not in ran]
    return "\n".join(_table(["variant", "s/step", "× bf16", "peak GPU GiB", "peak host RSS GiB"], body)
                     + ["", "(step = the last step of two, one repeat) " + _from(rows[0], name)])


def _plan(row: dict) -> str:
    "The settings a memory run trained with: the planner's choice (`plan_lines`) or the variant's own keys."
    from longcat_nb.memory import planned_settings
    chosen = next((planned_settings(l) for l in row.get("plan_lines", []) if l.startswith("plan ")), None)
    if chosen:
        recomputed = chosen["recomputed_block_inputs"]
        recomputed = f", {recomputed} inputs recomputed" if recomputed else ""
        fused = ", fused elementwise" if row["extra"].get("fused_elementwise") == "on" else ""
        offload = "yes" if chosen["activation_offload"] else "no"
        return (f"{chosen['base_model_precision']}, {chosen['musubi_blocks_to_swap']} swapped, offload {offload}, "
                f"FFN chunks {chosen['ffn_chunks']}{recomputed}{fused}")
    return ", ".join(f"{k}: {v}" for k, v in row["extra"].items())


def memory_plans() -> str:
    "`longcat-nb train` at 832×480×93 under each memory setting (benchmarks/bench_memory.py rows)."
    resident_name = "train_h200_2026-12-04.json"
    resident = next(r for r in _json(resident_name)["rows"] if r["what"] == "eager, attention kept")   # the yardstick
    head = [f"| run | settings | GPU cap GiB | s/step | × resident {resident['s_per_step']} s | peak allocated GiB | "
            "peak reserved GiB | host RSS GiB | validation videos | date, commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    body = []
    rows = [r for f in sorted(RESULTS.glob("memory_h200_*.jsonl")) for r in _rows(f.name)]
    for r in rows:
        cap = r["gpu_gib_cap"] or "—"
        step = r["train_step_s"][-1]
        body.append(f"| {r['variant']} | {_plan(r)} | {cap} | {step:.2f} | {step / resident['s_per_step']:.2f} | "
                    f"{r['train_peak_gib']:.1f} | "
                    f"{r['train_reserved_gib']:.1f} | {r['peak_host_rss_gib']:.1f} | {len(r['videos'])} | "
                    f"{r['date']}, {r['commit']} |")
    gpu = {r["gpu"] + ", torch " + r["torch"] for r in rows}
    files = ", ".join(f"`benchmarks/results/{f.name}`" for f in sorted(RESULTS.glob("memory_h200_*.jsonl")))
    return "\n".join(head + body + ["", f"({'; '.join(sorted(gpu))}; step = the last step of two; each row's command "
                                        f"is in its JSON line: {files}; the resident step: `benchmarks/results/"
                                        f"{resident_name}`, {resident['what']}.)"])


def training() -> str:
    "`longcat-nb train` at full size, re-measured 2026-12-04 (SPEC §10b)."
    name = "train_h200_2026-12-04.json"
    d = _json(name)
    notes = lambda r: "; ".join(filter(None, [
        r.get("compile_steps_s") and "compile steps " + ", ".join(f"{s} s" for s in r["compile_steps_s"]),
        r.get("host_rss_gib") and f"host RSS {r['host_rss_gib']} GiB",
        r.get("without_expandable_segments") and f"without `expandable_segments:True`: {r['without_expandable_segments']}"]))
    rows = [[r["what"], r["size"].replace("x", "×"), f"{r['s_per_step']:.2f}", f"{r['peak_gib']:.1f}", notes(r)] for r in d["rows"]]
    return "\n".join(_table(["what", "clips", "s/step", "peak GPU GiB", "notes"], rows) + ["", _from(d, name)])


TRAIN_STEPS_PATTERN = "train_*.json"


def train_steps() -> str:
    """Issue 22's trainer runs: `longcat-nb train` at full size per setting, step times from the run's progress.jsonl
    (benchmarks/step_timeline.py): every file that has them, oldest first, each row with its GPU and the tree it ran
    (the transcribed 2026-12-04 file: "training")."""
    used = [n for n in _newest(TRAIN_STEPS_PATTERN) if "timelines" in _json(n)]
    if not used:
        return _pending(TRAIN_STEPS_PATTERN, "bash benchmarks/gpu_session.sh train")
    fig = lambda r, k, f="{:.2f}": f.format(r[k]) if r.get(k) is not None else "—"
    rows = [[r["what"], _gpu(_json(n)).removeprefix("NVIDIA "), _json(n)["commit"], r["size"].replace("x", "×"),
             r["steps"], fig(r, "first_step_s", "{:.1f}"), fig(r, "s_per_step"), fig(r, "peak_gib", "{:.1f}"),
             fig(r, "reserved_gib", "{:.1f}"), r.get("note", "")]
            for n in used for r in _json(n)["rows"]]
    return "\n".join(_table(["what", "GPU", "tree", "clips", "steps", "first step s", "steady s/step",
                             "peak allocated GiB", "peak reserved GiB", "notes"], rows)
                     + [""] + [_from(_json(n), n) for n in used])


STEP_PROFILE_PATTERN = "step_profile_*.json"
SPARSE_STEP_GOAL_S = 4.0                                         # issue 23, 832×512×93


def step_profile() -> str:
    """Issue 23: the trainer's compiled LoRA step at 832×512×93 (attention kept), block-sparse and dense, by kernel kind
    (benchmarks/profile_step.py's profiled step, CUDA device time), and what the sparse step's goal leaves once the
    kinds no attention kernel can remove are counted: the base's matmuls and the cross-attention (cuDNN)."""
    used = _newest(STEP_PROFILE_PATTERN)
    if not used:
        return _pending(STEP_PROFILE_PATTERN, "GROUP=d bash benchmarks/gpu_session.sh profile")
    kinds = ["matmul", "attention (block-sparse)", "attention", "triton (fused)", "elementwise/copy", "norm/reduce"]
    out = []
    for n in used:
        d = _json(n)
        rows = [[r["variant"], f"{r['median_s']:.2f}", f"{r['peak_gib']:.1f}",
                 *(f"{r['by_kind_ms'][k]:,.0f}" if k in r["by_kind_ms"] else "—" for k in kinds),
                 f"{sum(r['by_kind_ms'].values()):,.0f}"] for r in d["rows"]]
        out += _table(["variant", "step s (median)", "peak GiB", *(f"{k} ms" for k in kinds), "all kernels ms"], rows)
        sparse = next((r for r in d["rows"] if r["variant"].startswith("bsa")), None)
        if sparse:
            fixed = (sparse["by_kind_ms"]["matmul"] + sparse["by_kind_ms"].get("attention", 0)) / 1e3
            left = f"{SPARSE_STEP_GOAL_S - fixed:+.2f}".replace("-", "−")
            out += ["", f"In the sparse step, the base's matmuls and the cuDNN attention left (the cross-attention to the "
                        f"caption) alone take {fixed:.2f} s of device time, against the ≤ {SPARSE_STEP_GOAL_S} s goal: "
                        f"{left} s left for self-attention and all the rest ({sparse['tokens']:,} tokens, rank "
                        f"{sparse['rank']})."]
        out += ["", _from(d, n)]
    return "\n".join(out)


def long_video() -> str:
    "Long videos: continuation and refinement at full size (benchmarks/bench_long_video.py)."
    name = "long_video_h200_2026-12-04.json"
    d = _json(name)
    seg, ref = d["three_segments"], d["refine"]
    rows = [[f"continuation step (CFG, {d['continuation_cond_frames']} conditioning frames)", f"{d['continuation_step_s']:.2f} s"],
            ["saved a step by the conditioning K/V cache", f"{d['kv_cache_saving_per_step'] * 100:.1f}%"],
            [f"3 segments ({seg['frames']} frames, {seg['steps_each']} steps each)", f"{seg['total_s']} s"],
            [f"refine to {ref['size'].replace('x', '×')}, {ref['frames']} frames, {ref['steps']} steps, {ref['attention']} attention",
             f"{ref['total_s']} s, peak {ref['peak_gib']} GiB"]]
    return "\n".join(_table(["what", "figure"], rows) + ["", _from(d, name)])


def precision() -> str:
    "`longcat-nb train` with and without the trainer's bf16 autocast (issue 10)."
    name = "precision_h200_2026-11-30.json"
    d = _json(name)
    rows = [[f"`mixed_precision: \"{r['mixed_precision']}\"` ({r['what']})", ", ".join(f"{s:.2f}" for s in r["step_s"]),
             f"**{statistics.median(r['step_s'][1:]):.2f}**", f"{r['peak_gib']:.1f}"] for r in d["rows"]]
    return "\n".join(_table(["trainer autocast", "step times (s)", "median s/step after the first", "peak GPU GiB"], rows)
                     + ["", f"{d['shape']}. " + _from(d, name)])


# the released block-sparse kernel, fwd+bwd vs dense cuDNN (SPEC §9: 23.7 vs 160.5 ms; 92.3 vs 725.6 ms), issue 23's goals
RELEASED_BSA = {39936: 160.5 / 23.7, 84480: 725.6 / 92.3}
BSA_GOAL = {39936: 13.0, 84480: 14.0}
BSA_PATTERN = "bsa_whole_path_*.json"
BSA_COMMAND = "bash benchmarks/gpu_session.sh bsa"


def bsa_whole_path() -> str:
    """Issue 23's table: the block-sparse whole path (and each kernel alone) fwd+bwd against dense cuDNN SDPA per token
    grid, with the released kernel and the goals beside it (benchmarks/bench_bsa.py's JSON; all files, newest per GPU
    and grid; the goals are the H200's)."""
    rows = _newest_per_gpu(BSA_PATTERN, lambda r: str(r["grid"]), lambda r: "dense_fwdbwd_ms" in r)   # not accuracy
    used = list(dict.fromkeys(r["file"] for r in rows))  # the files shown: their accuracy, block and provenance lines
    if not rows:
        return _pending(BSA_PATTERN, BSA_COMMAND)
    x = lambda r, k: f"{r[k]:.2f}×" if k in r else "—"
    out = [[f"{r['tokens']:,} ({'×'.join(map(str, r['grid']))})", r["gpu"].removeprefix("NVIDIA "), r["commit"],
            f"{r['dense_fwdbwd_ms']:.1f}",
            x(r, "triton_speedup_fwdbwd"), x(r, "flex_speedup_fwdbwd"), x(r, "triton1_kernel_speedup_fwdbwd"),
            x(r, "triton2_kernel_speedup_fwdbwd"), x(r, "triton1tma_kernel_speedup_fwdbwd"),
            x(r, "triton1packed_kernel_speedup_fwdbwd"), f"{r['select_ms']:.2f}",
            f"{r['dkdv_max_over_mean_structured']:.2f}",
            f"{RELEASED_BSA[r['tokens']]:.2f}×" if r["tokens"] in RELEASED_BSA else "—",
            f"≥ {BSA_GOAL[r['tokens']]:.0f}×" if r["tokens"] in BSA_GOAL else "—"] for r in rows]
    accuracy = [f"{k.split('_rel_')[0]} {k.split('_rel_')[1]} {v:.1e}" for n in used for r in _json(n)["rows"]
                if r.get("what", "").startswith("accuracy") for k, v in r.items() if "_rel_" in k]
    blocks = [f"{_gpu(_json(n)).removeprefix('NVIDIA ')}, {'×'.join(map(str, r['grid']))}: SDPA {r['sdpa_ms']:.1f} ms, "
              f"block-sparse {r['bsa_ms']:.1f} ms ({r['sdpa_ms'] / r['bsa_ms']:.2f}×)" for n in used for r in _json(n)["rows"]
              if r.get("what") == "full-size block fwd+bwd"]
    tuned = [f"{r['gpu'].removeprefix('NVIDIA ')}, {'×'.join(map(str, r['grid']))}: "
             + ", ".join(f"{k} {v}" for k, v in settings.items())
             for r in rows for settings in r.get("triton_tuned", {}).values()]
    if blocks:
        blocks = [f"One full-size block (hidden 4096, bf16, frozen weights, no LoRA) fwd+bwd w.r.t. its input, "
                  f"{'; '.join(blocks)}."]
    if tuned:
        blocks += [f"The tuner's choice for the Triton whole path: {'; '.join(tuned)}."]
    split = [f"{r['gpu'].removeprefix('NVIDIA ')}, {'×'.join(map(str, r['grid']))}: "
             + ", ".join(f"{k} {v:.2f}" for k, v in r["triton_split_ms"].items())
             for r in rows if "triton_split_ms" in r]
    if split:
        blocks += [f"Where the Triton whole path's fwd+bwd goes, ms a call (torch.profiler): {'; '.join(split)}."]
    return "\n".join(_table(["tokens (grid)", "GPU", "tree", "dense fwd+bwd ms", "whole path, Triton", "whole path, Flex",
                             "Triton kernel alone, 1 key chunk/step", "2 chunks/step", "1 chunk/step, TMA boxes",
                             "1 chunk/step, packed copies", "selection ms",
                             "dk/dv work max/mean", "released kernel", "goal"], out)
                     + ["", "Speed-ups are fwd+bwd over dense cuDNN SDPA; a grid that does not divide by the 4×4×4 "
                            "chunk runs padded. Accuracy against the fp32 reference (relative): "
                            + ", ".join(dict.fromkeys(accuracy)) + "."]
                     + blocks + [""]
                     + [_from(_json(n), n) for n in used])


LEVERS_PATTERN = "levers_*.json"


def levers() -> str:
    """Issue 22's per-lever table: one full-width block at 832×480×93 as the trainer runs it, each lever on and off in
    one run (benchmarks/bench_levers.py's JSON, the newest file)."""
    used = _newest(LEVERS_PATTERN)
    if not used:
        return _pending(LEVERS_PATTERN, "python benchmarks/bench_levers.py --json $OUT/levers.json")
    name = used[-1]
    d = _json(name)
    on = lambda v: ", ".join(filter(None, [v[0] and "LoRA epilogue", v[1] and f"q/k norm + RoPE: {v[1]}",
                                           v[2] and f"elementwise: {v[2]}",
                                           v[3] and f"compiled ({'keeping' if v[3] != 'recompute' else 'recomputing'} "
                                                    "attention)"])) or "none"
    rel = lambda r, k: f"{r[k]:.1e}" if k in r else "—"
    rows = [[v, on(d["variants"][v]), f"{r['first_s']:.2f}", f"{r['median_s'] * 1e3:.0f}",
             f"{r['median_s'] * DEPTH:.2f}",
             f"{r['speedup']:.2f}×" if "speedup" in r else "1.00×",
             f"{r['peak_allocated_gib']:.1f}" if "peak_allocated_gib" in r else "—",
             rel(r, "output_rel_diff"), rel(r, "max_grad_rel_diff")] for v, r in d["block"].items()]
    lines = _table(["variant", "levers on", "first s", "median ms", "× 48 blocks, s", "speed-up", "peak GiB",
                    "output vs plain", "LoRA grads vs plain"], rows)
    if "qk_alone" in d:
        lines += ["", "The q/k norm + RoPE alone over the packed qkv:", ""] + _table(
            ["how", "fwd ms", "fwd+bwd ms", "q vs fp32", "k vs fp32"],
            [[k, f"{r['fwd_ms']:.2f}", f"{r['fwd_bwd_ms']:.2f}", f"{r['q_rel_vs_fp32']:.1e}", f"{r['k_rel_vs_fp32']:.1e}"]
             for k, r in d["qk_alone"].items()])
    if "lora_alone" in d:
        lines += ["", "One LoRA linear alone, PEFT's sum against the epilogue:", ""] + _table(
            ["layer", "fwd ms", "fwd+bwd ms", "output vs PEFT"],
            [[k, f"{r['fwd_ms']:.2f}", f"{r['fwd_bwd_ms']:.2f}", rel(r, "output_rel_diff")]
             for k, r in d["lora_alone"].items()])
    return "\n".join(lines + ["", f"{d['tokens']:,} tokens, hidden {d['hidden']}, rank {d['rank']}, backend "
                                   f"{d['backend']}, median of {d['steps']}. " + _from(d, name)])


SAMPLE_CLI_PATTERN = "sample_cli_*.json"
SAMPLE_GOAL_S = {"cfg40": 240, "distilled": 50}          # issue 22: the whole command at 832×480×93


def sample_steps(args: list[str]) -> int:
    "Denoising steps of a `longcat-nb sample` command line: `--steps N`, else 16 with --distilled, else 40."
    return int(args[args.index("--steps") + 1]) if "--steps" in args else 16 if "--distilled" in args else 40


def sample_cli() -> str:
    """Issue 22's sampling table: `longcat-nb sample`, the whole command per variant (benchmarks/bench_sample_cli.py's
    JSON; all files, newest per GPU and variant)."""
    rows = _newest_per_gpu(SAMPLE_CLI_PATTERN, lambda r: r["variant"])
    used = list(dict.fromkeys(r["file"] for r in rows))  # the files shown: their provenance lines
    if not rows:
        return _pending(SAMPLE_CLI_PATTERN, "bash benchmarks/gpu_session.sh sample")
    goal = lambda v: SAMPLE_GOAL_S[v.split("_")[0]]
    verdict = lambda r: ("failed (exit {})".format(r["rc"]) if r["rc"] else
                         "met" if r["wall_s"] <= goal(r["variant"]) else "not met")
    stage = lambda r, k: f"{r[k]:.1f}" if k in r else "—"
    per_step = lambda r: f"{r['denoise_s'] / sample_steps(r['args']):.2f}" if "denoise_s" in r else "—"
    later = lambda r: (f"{(r['denoise_s'] - r['first_step_s']) / (sample_steps(r['args']) - 1):.2f}"
                       if "first_step_s" in r and "denoise_s" in r else "—")
    out = [[r["variant"], r["gpu"].removeprefix("NVIDIA "), r["commit"], " ".join(r["args"]),
            ", ".join(f"{k}: {v}" for k, v in r["config_keys"].items()) or "—",
            stage(r, "to_denoise_s"), stage(r, "denoise_s"), per_step(r), stage(r, "first_step_s"), later(r),
            stage(r, "decode_write_s"),
            f"{r['wall_s']:.1f}", f"≤ {goal(r['variant'])}", verdict(r)] for r in rows]
    sizes = sorted({f"{_json(n)['size'].replace('x', '×')}×{_json(n)['frames']}" for n in used})
    return "\n".join(_table(["variant", "GPU", "tree", "arguments", "config", "to the first step s", "steps s",
                             "s/step", "first step s", "later steps s/step", "decode + write s", "whole command s",
                             "goal s", ""], out)
                     + ["", f"{', '.join(sizes)}; from launch to exit: imports, load and prompt encoding (to the first "
                            "step), denoising (a compiled run's first step compiles: s/step includes that, the later "
                            "steps' mean does not), VAE decode and the mp4 written; the stages as the command's own "
                            "stderr marks them (— for the first step where a file predates that mark).", ""]
                     + [_from(_json(n), n) for n in used])


SAMPLE_TAB_PATTERN = "sample_tab_*.json"


def sample_tab() -> str:
    "Issue 20's Sample tab: two Generate clicks on one loaded pipeline (benchmarks/bench_sample_tab.py, the newest file)."
    used = _newest(SAMPLE_TAB_PATTERN)
    if not used:
        return _pending(SAMPLE_TAB_PATTERN, "bash benchmarks/gpu_session.sh sampletab")
    name = used[-1]
    d = _json(name)
    what = f"{d['size'].replace('x', '×')}×{d['frames']}, {d['steps']} steps" + (", distilled" if d["distilled"] else "")
    rows = [["first click (loads the pipeline)", f"{d['first_click_s']:.1f}"],
            ["second click (the same pipeline)", f"{d['second_click_s']:.1f}"],
            ["pipeline loads in both clicks", d["pipeline_loads"]]]
    return "\n".join(_table(["Sample tab, " + what + f", {d['precision']}", "s"], rows) + ["", _from(d, name)])


def memory_h100() -> str:
    """The 16 GB plan's settings through `longcat-nb train` on an H100 (2026-12-05): inductor's compile-worker pool
    against compiling in-process (benchmarks/bench_memory.py rows; host figures: the process tree's peak RSS, and the
    trainer's own peak from its progress.jsonl)."""
    name = "memory_h100_2026-12-05.jsonl"
    rows = _rows(name)
    trainer_peak = lambda r: max(e[3] for e in r["host_by_event"] if e[3] is not None)
    out = [[r["variant"], r["compile_threads"], f"{r['gpu_gib_cap']:.1f}", f"{statistics.median(r['train_step_s']):.2f}",
            f"{r['train_reserved_gib']:.1f}", f"{r['peak_host_rss_gib']:.1f}", f"{trainer_peak(r):.1f}"] for r in rows]
    return "\n".join(_table(["settings", "inductor compile workers", "GPU cap GiB", "s/step", "peak reserved GiB",
                             "host peak GiB (all processes)", "host peak GiB (trainer)"], out)
                     + ["", f"{rows[0]['extra']}; 832×480×93, rank 16, 2 steps, T2V and I2V validation. "
                            + _from(rows[0], name)])


KERNELS_NB = ROOT / "nbs" / "09_kernels.ipynb"
TRAINING_NB = ROOT / "nbs" / "07_training.ipynb"
# name → (renderer, the files that show it)
TABLES = {"transformer": (transformer, [RESULTS_MD]),
          "vae": (vae, [RESULTS_MD]),
          "sampling": (sampling, [RESULTS_MD]),
          "compile": (compile_, [RESULTS_MD]),
          "attention": (attention, [RESULTS_MD]),
          "step-floor": (step_floor, [RESULTS_MD]),
          "fsdp": (fsdp, [RESULTS_MD]),
          "bsa": (bsa, [RESULTS_MD, KERNELS_NB]),
          "bsa-kernels": (bsa_kernels, [RESULTS_MD, KERNELS_NB]),
          "bsa-whole-path": (bsa_whole_path, [RESULTS_MD]),
          "levers": (levers, [RESULTS_MD]),
          "sample-cli": (sample_cli, [RESULTS_MD]),
          "sample-tab": (sample_tab, [RESULTS_MD]),
          "training": (training, [RESULTS_MD]),
          "train-steps": (train_steps, [RESULTS_MD]),
          "step-profile": (step_profile, [RESULTS_MD]),
          "long-video": (long_video, [RESULTS_MD]),
          "memory-settings": (memory_settings, [RESULTS_MD]),
          "memory-plans": (memory_plans, [RESULTS_MD]),
          "memory-h100": (memory_h100, [RESULTS_MD]),
          "precision": (precision, [RESULTS_MD, TRAINING_NB])}


def render(text: str, name: str, table: str) -> str:
    "`text` with the table `name` replaced by `table` (its markers must be there)."
    pattern = re.compile(rf"(<!-- table:{name}:start -->\n)(?:.*?\n)?(<!-- table:{name}:end -->)", re.S)
    if not pattern.search(text): raise SystemExit(f"no <!-- table:{name}:start/end --> markers")
    return pattern.sub(lambda m: m[1] + table + "\n" + m[2], text)


def _marked(path: Path, name: str) -> list[str]:
    "The texts in `path` that hold table `name`: the whole Markdown file, or each notebook Markdown cell with its marker."
    if path.suffix != ".ipynb": return [path.read_text()]
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
    found = [src for src in ("".join(c["source"]) for c in cells) if f"<!-- table:{name}:start -->" in src]
    if not found: raise SystemExit(f"{path.name}: no Markdown cell with <!-- table:{name}:start --> markers")
    return found


def write(path: Path, name: str, table: str):
    "Render table `name` into `path` (a notebook keeps nbdev-clean's JSON layout; only its Markdown cells change)."
    if path.suffix != ".ipynb": return path.write_text(render(path.read_text(), name, table))
    _marked(path, name)
    nb = json.loads(path.read_text())
    for c in nb["cells"]:
        src = "".join(c["source"])
        if c["cell_type"] == "markdown" and f"<!-- table:{name}:start -->" in src:
            c["source"] = render(src, name, table).splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def stale() -> list[str]:
    "Names of tables whose rendered text (a file, or a notebook's Markdown cell) differs from what their JSON renders."
    bad = []
    for name, (fn, paths) in TABLES.items():
        table = fn()
        if any(render(text, name, table) != text for path in paths for text in _marked(path, name)): bad.append(name)
    return bad


def missing_provenance() -> list[str]:
    "Results files (or JSONL lines) lacking a date, commit, torch or GPU field."
    bad = []
    for path in sorted(RESULTS.glob("*.json*")):
        for i, d in enumerate(_rows(path.name) if path.suffix == ".jsonl" else [_json(path.name)]):
            lacking = [k for k in PROVENANCE if k not in d] + ([] if "gpu" in d or "device" in d else ["gpu"])
            if lacking: bad.append(f"{path.name}{f' line {i + 1}' if path.suffix == '.jsonl' else ''}: {', '.join(lacking)}")
    return bad


if __name__ == "__main__":
    if "--results" in sys.argv: RESULTS = Path(sys.argv[sys.argv.index("--results") + 1])
    if "--check" in sys.argv:
        bad, unknown = stale(), missing_provenance()
        print("stale tables: " + ", ".join(bad) if bad else "all tables match their JSON")
        if unknown: print("results without provenance: " + "; ".join(unknown))
        sys.exit(1 if bad or unknown else 0)
    for name, (fn, paths) in TABLES.items():
        for path in paths: write(path, name, fn())
    print("tables rendered:", ", ".join(TABLES), "— run nbdev-clean if a notebook changed")
