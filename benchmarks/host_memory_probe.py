"""Where the host memory of a low-memory plan goes, stage by stage (issue 19: the 16 GB plan's host RSS), measured
the way a container limit sees it: the process's RSS (and its kinds), locked/pinned pages, the machine's available
memory and the cgroup's charge — after CUDA starts, for a page-locked buffer, and through loading, block swap and the
activation-offload arena of a plan at full size.

    python benchmarks/host_memory_probe.py CKPT --json $OUT/host_probe.json [--swapped 42 --recomputed 32]
"""
import argparse, gc, json, time
from pathlib import Path

import psutil
import torch

from longcat_nb.offload import BlockRunner, BlockSwap, PinnedBlocks, release_free_host_memory
from longcat_nb.quantise import _plain, load_transformer
from provenance import provenance   # benchmarks/provenance.py

GiB = 2**30


def _status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmLck", "VmPin"):
            out[k] = round(int(v.split()[0]) * 1024 / GiB, 2)
    return out


def _cgroup() -> float | None:
    for f in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
        try:
            return round(int(Path(f).read_text()) / GiB, 2)
        except (OSError, ValueError):
            pass
    return None


def record(rows, stage, t0):
    gc.collect()
    release_free_host_memory()
    row = dict(stage=stage, s=round(time.time() - t0, 1), rss=round(psutil.Process().memory_info().rss / GiB, 2),
               **_status(), available=round(psutil.virtual_memory().available / GiB, 2), cgroup=_cgroup())
    rows.append(row)
    print(json.dumps(row), flush=True)


def buffer_probe(rows, t0, gib=2):
    "A page-locked buffer of `gib` GiB, registered in place (as PinnedArena does) and through pin_memory."
    n = gib * GiB
    t = torch.empty(n, dtype=torch.uint8)
    record(rows, f"torch.empty {gib} GiB", t0)
    rc = int(torch.cuda.cudart().cudaHostRegister(t.data_ptr(), n, 0))
    record(rows, f"cudaHostRegister (rc {rc}), untouched", t0)
    t.fill_(1)
    record(rows, "registered, written", t0)
    torch.cuda.cudart().cudaHostUnregister(t.data_ptr())
    del t
    record(rows, "unregistered, freed", t0)
    p = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    record(rows, "pin_memory=True, untouched", t0)
    p.fill_(1)
    record(rows, "pin_memory=True, written", t0)
    del p
    empty = getattr(torch._C, "_host_emptyCache", None)        # PyTorch's caching host allocator keeps freed blocks
    if empty:
        empty()
    record(rows, f"pinned freed{', host cache emptied' if empty else ''}", t0)


def plan_probe(rows, t0, ckpt, precision, swapped, recomputed, grid, tag, pin_while_loading):
    """Loading, block swap and the offload arena of one plan, then all of it freed; `pin_while_loading`: as the trainer
    loads (swapped blocks pinned as they are read), else the loader leaves them unpinned on the CPU first."""
    pinned = PinnedBlocks("cuda") if pin_while_loading else None
    model = load_transformer(ckpt, torch.bfloat16, precision, device="cuda", host_blocks=swapped, progress=False,
                             on_host=pinned.add if pinned else None)
    record(rows, f"{tag}: loaded, {swapped} blocks on the host", t0)
    swap = BlockSwap(model, swapped, "cuda", pinned=pinned)
    host = [x for _, _, h in swap.host[swap.first] for x in _plain(h)]
    print(f"{tag}: swapped weights page-locked: {all(x.is_pinned() for x in host)}", flush=True)
    # slabs page-locked in place / all slabs (fewer: cudaHostRegister refused, PyTorch's power-of-two pinning took over)
    record(rows, f"{tag}: block swap pinned ({swap.arena.nbytes / GiB:.2f} GiB arena, "
                 f"{len(swap.arena.locked)}/{len(swap.arena.slabs)} slabs registered)", t0)
    tokens = grid[0] * grid[1] * grid[2]
    runner = BlockRunner(model, "cuda", swap, True, tokens, recomputed)
    for i in set(range(len(model.blocks))) - runner.recomputed:        # the buffers the first step's stashes take
        runner.host_buffer(i, (1, tokens, model.config.hidden_size), torch.bfloat16, grow=True)
    record(rows, f"{tag}: offload arena ({runner.arena.nbytes / GiB:.2f} GiB, "
                 f"{len(runner.arena.locked)}/{len(runner.arena.slabs)} slabs registered)", t0)
    for s in runner.arena.slabs:
        s.fill_(1)
    record(rows, f"{tag}: offload arena written", t0)
    swap.remove()
    del model, swap, runner, pinned, host
    torch.cuda.empty_cache()
    record(rows, f"{tag}: all freed", t0)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--precision", default="int8-quanto")
    p.add_argument("--swapped", type=int, default=42)
    p.add_argument("--recomputed", type=int, default=32)
    p.add_argument("--grid", default="24,30,52")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    rows, t0 = [], time.time()
    torch.zeros(1, device="cuda")
    record(rows, "CUDA started", t0)
    buffer_probe(rows, t0)
    grid = tuple(int(x) for x in a.grid.split(","))
    plan_probe(rows, t0, a.ckpt, a.precision, a.swapped, a.recomputed, grid, "pinned while loading", True)
    plan_probe(rows, t0, a.ckpt, a.precision, a.swapped, a.recomputed, grid, "unpinned first", False)
    if a.json:
        a.json.write_text(json.dumps({**provenance(), "rows": rows}, indent=1))
