"""The memory planner's calibration, outside the library: measure one block at the released width on the CPU, fit
the GPU terms to `longcat-nb train` runs, and write both into `longcat_nb/memory_calibration.json`, which the planner
(`longcat_nb.memory`) reads.

    python benchmarks/calibrate_memory.py measure            # ~2 min on 2 CPU cores: block and sampling bytes a token
    python benchmarks/calibrate_memory.py fit benchmarks/results/memory_h200_*.jsonl   # slacks, fused share, host base

With per-block checkpointing a step's GPU peak is the weights, the LoRA state, the checkpointed block inputs, and
what ONE block holds while it is recomputed and differentiated. That last term is measured here on one real
`LongCatBlock` with the trainer's LoRA (rank 16, fp32, default targets) under a bf16 autocast: `saved_bytes` counts
what autograd saves for the backward (each storage once, parameters and the block input excluded), by part;
`LiveBytes` follows every tensor the ops create and records the peak of those alive. Per token, the terms that grow
with the video are the slope between two token counts; what is left is the per-block constant.
"""
import argparse, json, math, re, subprocess, sys
from pathlib import Path

import torch
import torch.nn as nn

from longcat_nb.model import LongCatVideoTransformer3DModel

CALIBRATION_JSON = Path(__file__).resolve().parent.parent / "longcat_nb" / "memory_calibration.json"


from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    "Bytes of the storages that ops create under this mode and that are still alive (views and in-place ops add none), and their peak."
    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]: self.now -= self.live.pop(key)[1]
        given = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor): continue
            st = t.untyped_storage()
            if st.data_ptr() in self.live or st.data_ptr() in given or not st.nbytes(): continue
            self.live[st.data_ptr()] = (StorageWeakRef(st), st.nbytes())
            self.now += st.nbytes()
        self.peak = max(self.peak, self.now)
        return out



BLOCK_PARTS = {"attn": "self-attention", "cross_attn": "cross-attention", "pre_crs_attn_norm": "cross-attention",
               "ffn": "FFN", "adaLN_modulation": "modulation", "mod_norm_attn": "modulation", "mod_norm_ffn": "modulation"}


def saved_bytes(block: nn.Module, run, exclude=()) -> tuple[dict[str, int], object]:
    """`({part: bytes autograd saves}, run())` for a `run()` that calls `block`: each storage once, the block's
    parameters and the tensors `exclude` not counted; a tensor saved inside a LoRA factor counts as "LoRA inputs"."""
    stack, seen, parts = [], {t.untyped_storage().data_ptr() for t in [*block.parameters(), *exclude]}, {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: stack.append(n)) for n, m in block.named_modules()]
    hooks += [m.register_forward_hook(lambda m, a, o: (stack.pop(), None)[1]) for m in block.modules()]
    def pack(t):
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            part = "LoRA inputs" if any("lora_" in n for n in stack) else BLOCK_PARTS.get(next((n.split(".")[0] for n in stack if n), ""), "modulation")
            parts[part] = parts.get(part, 0) + t.untyped_storage().nbytes()
        return t
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): out = run()
    finally:
        for h in hooks: h.remove()
    return parts, out



def one_block_model(hidden: int = 4096, heads: int = 32, rank: int = 16, seed: int = 0) -> LongCatVideoTransformer3DModel:
    "A 1-block transformer of width `hidden` on the CPU: random bf16 weights, the trainer's LoRA (rank `rank`, fp32, B ≠ 0)."
    from longcat_nb.lora import add_lora, set_lora_input_cast
    with torch.device("meta"):
        model = LongCatVideoTransformer3DModel(hidden_size=hidden, num_heads=heads, caption_channels=hidden, depth=1)
    model, g = nn.Module.to(model.to_empty(device="cpu"), torch.bfloat16), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 if p.ndim > 1 else float("norm" in n) * torch.ones_like(p))
    add_lora(model, rank)
    set_lora_input_cast(model, False)                   # as the trainer sets it under its bf16 autocast
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.02, generator=g)
    return model


def measure_block(model, tokens: int = 256, frames: int = 2, text_tokens: int = 512, ffn_chunks: int = 1,
                  autocast: bool = True) -> dict:
    """One checkpointed block's backward at `tokens` tokens (`frames` latent frames of 8 × W/8 tokens) on the CPU:
    `saved` bytes by part, `peak` live bytes (incoming gradient, recompute, backward; weights and block input excluded)."""
    from longcat_nb.model import rope_3d, set_ffn_chunks
    block, C, w = model.blocks[0], model.config.hidden_size, tokens // (frames * 8)
    if frames * 8 * w != tokens: raise ValueError(f"tokens = {tokens}: use a multiple of {frames * 8}")
    set_ffn_chunks(model, ffn_chunks)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, tokens, C, generator=g).to(torch.bfloat16).requires_grad_()
    y = torch.randn(1, text_tokens, C, generator=g).to(torch.bfloat16)
    t, rope = torch.randn(1, frames, model.config.adaln_tembed_dim, generator=g), rope_3d((frames, 8, w), C // model.config.num_heads)
    with LiveBytes() as live:
        grad = torch.randn(1, tokens, C, generator=g).to(torch.bfloat16)
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            saved, out = saved_bytes(block, lambda: block(x, y, t, rope), exclude=[x])
        out.backward(grad)
    set_ffn_chunks(model, 1)
    return dict(tokens=tokens, saved=saved, peak=live.peak)



def block_activation_model(hidden: int = 4096, heads: int = 32, rank: int = 16, tokens=(256, 512), ffn_chunks=(1, 8)) -> dict:
    "`{ffn_chunks: {saved: {part: bytes/token}, peak: bytes/token, constant: bytes}}` of one block, measured by `measure_block`."
    model, out = one_block_model(hidden, heads, rank), {}
    for c in ffn_chunks:
        a, b = (measure_block(model, n, ffn_chunks=c) for n in tokens)
        dn = tokens[1] - tokens[0]
        per = lambda k: round((b["saved"].get(k, 0) - a["saved"].get(k, 0)) / dn)
        out[c] = dict(saved={k: per(k) for k in sorted(a["saved"] | b["saved"])}, peak=round((b["peak"] - a["peak"]) / dn),
                      constant=round(a["peak"] - (b["peak"] - a["peak"]) / dn * tokens[0]))
    return out



def measure_block_forward(model, tokens: int = 256, frames: int = 2, text_tokens: int = 512, batch: int = 2) -> dict:
    "One block's no-grad forward (a sampling step; `batch` 2 under guidance) on the CPU: live-bytes peak, its input excluded."
    from longcat_nb.model import rope_3d
    block, C, w = model.blocks[0], model.config.hidden_size, tokens // (frames * 8)
    if frames * 8 * w != tokens: raise ValueError(f"tokens = {tokens}: use a multiple of {frames * 8}")
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(batch, n, C, generator=g).to(torch.bfloat16) for n in (tokens, text_tokens))
    t, rope = torch.randn(batch, frames, model.config.adaln_tembed_dim, generator=g), rope_3d((frames, 8, w), C // model.config.num_heads)
    with torch.no_grad(), LiveBytes() as live, torch.autocast("cpu", torch.bfloat16): block(x, y, t, rope)
    return dict(tokens=batch * tokens, peak=live.peak)


def sampling_activation_model(hidden: int = 4096, heads: int = 32, rank: int = 16, tokens=(256, 512)) -> dict:
    "`{peak: bytes a token of the batch, constant: bytes}` of one block's sampling forward, by `measure_block_forward`."
    model = one_block_model(hidden, heads, rank)
    a, b = (measure_block_forward(model, n) for n in tokens)
    per = (b["peak"] - a["peak"]) / (b["tokens"] - a["tokens"])
    return dict(peak=round(per), constant=round(a["peak"] - per * a["tokens"]))



def fit_reserved_slack(rows) -> float:
    """Peak reserved / peak allocated, with expandable segments, of the runs whose reserved peak stayed below their
    GPU cap (at the cap the allocator gives back what it can, so those say nothing of its slack): 1.03 resident,
    1.09–1.20 where blocks stream (the swap and offload buffers freed on other streams stay cached while there is
    room). One factor for all: the geometric mean of the smallest and largest ratio, which keeps the largest relative
    error least."""
    ratios = [r["train_reserved_gib"] / r["train_peak_gib"] for r in rows
              if r.get("train_reserved_gib") and r["train_reserved_gib"] < (r.get("gpu_gib_cap") or float("inf")) - 0.2]
    if not ratios: raise SystemExit("no run with a reserved peak below its cap in these rows")
    return round(math.sqrt(min(ratios) * max(ratios)), 3)


def fused_workspace(rows) -> float:
    """The share of one block's recompute + backward peak (`workspace_bytes`) left when the elementwise work is fused:
    over the runs trained with `fused_elementwise: on`, the largest (peak allocated − the planner's other terms) /
    the unfused workspace, rounded up to 0.01."""
    from longcat_nb.memory import GiB, predict, workspace_bytes
    shares = []
    for r in rows:
        if r.get("extra", {}).get("fused_elementwise") != "on" or r.get("train_rc", 0) or not r.get("train_peak_gib"):
            continue
        precision, swapped, offload, recomputed, tokens, chunks = run_settings(r)
        unfused = predict(precision, swapped, offload, tokens, ffn_chunks=chunks, recomputed_inputs=recomputed)
        workspace = workspace_bytes(tokens, chunks)
        shares.append((r["train_peak_gib"] * GiB - (unfused.allocated_gib * GiB - workspace)) / workspace)
    if not shares: raise SystemExit("no run with fused elementwise work in these rows")
    return math.ceil(max(shares) * 100) / 100


def run_settings(row) -> tuple[str, int, bool, int, int, int]:
    """`(precision, swapped blocks, activation offload, recomputed inputs, tokens, ffn_chunks)` a bench_memory row
    trained with: the planner's choice (its `plan` line) or the variant's own keys; tokens from the plan's notes (else
    832×480×93)."""
    lines = row.get("plan_lines", [])
    tokens = next((int(m[1].replace(",", "")) for l in lines if (m := re.search(r"= ([0-9,]+) tokens", l))), 37440)
    from longcat_nb.memory import planned_settings
    x = next((planned_settings(l) for l in lines if l.startswith("plan ")), None) or row["extra"]
    return (x.get("base_model_precision", "bf16"), x.get("musubi_blocks_to_swap", 0), x.get("activation_offload", False),
            x.get("recomputed_block_inputs", 0), tokens, x.get("ffn_chunks", 1))


def measured_since(row: dict, rev: str) -> bool:
    """Whether `row` was measured at commit `rev` or one after it (its `commit` descends from `rev` in this repository),
    or with inductor compiling in-process (`TORCHINDUCTOR_COMPILE_THREADS=1` in its `env`: what d8a72a8 made the
    default for streamed blocks, set by hand)."""
    if row.get("env", {}).get("TORCHINDUCTOR_COMPILE_THREADS") == "1":
        return True
    commit = row.get("commit") or "unknown"
    return subprocess.run(["git", "merge-base", "--is-ancestor", rev, commit], capture_output=True).returncode == 0


def fit_host_base(rows, hidden: int = 4096, depth: int = 48, swapped_since: str | None = None) -> dict[str, dict]:
    """Host GiB a `longcat-nb train` process holds beyond its pinned swap and offload memory, by whether blocks were
    swapped (`resident` / `swapped`: loading blocks to the host costs more than their pinned bytes) and base precision:
    the largest (peak host RSS − pinned bytes of its settings) over the rows that trained, rounded up to 0.1 GiB — so
    the planner's host figure covers the measured peaks (loading, validation and export included). `swapped_since`: a
    commit; rows with swapped blocks count only when measured there or later (the loader changed how they reach
    pinned memory)."""
    from longcat_nb.memory import offload_host_bytes, swap_host_bytes
    base = {}
    for r in rows:
        if r.get("train_rc", 0) != 0 or not r.get("peak_host_rss_gib"):
            continue
        precision, swapped, offload, recomputed, tokens, _ = run_settings(r)
        if swapped and swapped_since and not measured_since(r, swapped_since):
            continue
        pinned = swap_host_bytes(swapped, precision, hidden)
        if offload:
            pinned += offload_host_bytes(depth - recomputed, tokens * hidden * 2)
        gib = math.ceil((r["peak_host_rss_gib"] - pinned / 2**30) * 10) / 10
        kind = base.setdefault("swapped" if swapped else "resident", {})
        kind[precision] = max(kind.get(precision, 0.0), gib)
    return base


def write(updates: dict, path: Path = CALIBRATION_JSON) -> None:
    "Set `updates` in the calibration JSON, keeping every other key (and the `_key` notes)."
    cal = json.loads(path.read_text())
    cal.update(updates)
    path.write_text(json.dumps(cal, indent=2) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("measure", help="block and sampling bytes a token at the released width (CPU)")
    f = sub.add_parser("fit", help="reserved_slack, fused_workspace and the host base from benchmark rows "
                       "(bench_memory.py's JSON lines)")
    f.add_argument("results", type=Path, nargs="+")
    f.add_argument("--swapped-since", metavar="COMMIT", help="fit the swapped host term only on rows measured at COMMIT "
                   "or later (d8a72a8: streamed blocks compile in-process, without inductor's pool of compile workers)")
    a = p.parse_args()
    if a.cmd == "measure":
        block, sampling = block_activation_model(), sampling_activation_model()
        write({"block": {str(k): v for k, v in block.items()}, "sampling": sampling})
        print(json.dumps({"block": block, "sampling": sampling}))
    else:
        rows = [json.loads(line) for path in a.results for line in path.read_text().splitlines() if line.strip()]
        fitted = {"reserved_slack": fit_reserved_slack(rows), "fused_workspace": fused_workspace(rows),
                  "host_base_gib": fit_host_base(rows, swapped_since=a.swapped_since)}
        write(fitted)
        print(json.dumps(fitted))
