"""One LoRA step of the low-memory plans at full size gives the resident model's LoRA gradients (same base precision,
same kernels: the resident model runs through the same block runner), on the full-size checkpoint.

    python benchmarks/grad_check_plans.py CKPT --json $OUT/grad_check.json      # H200: ~4 min, int8 base
    python benchmarks/grad_check_plans.py --tiny                                 # CPU: the tiny checkpoint, recompute only

Each plan is `swapped,offload,recomputed` (`--plans "21,1,0;42,1,32"`: an int8 24 GB plan and the 16 GB plan for 27 GiB of host RAM). Prints
and writes, per plan, the largest |g − g_resident| / max |g_resident| over the LoRA tensors, and the loss of each.
"""
import argparse, json, time
from pathlib import Path

import torch

from longcat_nb.lora import add_lora, lora_layers
from longcat_nb.model import compute_autocast
from longcat_nb.offload import BlockRunner, PinnedBlocks, place_model
from longcat_nb.quantise import load_transformer
from longcat_nb.testing import random_lora_factors


def step(ckpt, precision, device, plan, grid, quantised_dir, rank=16):
    "Loss and LoRA gradients (fp32, CPU) of one step with plan `(swapped, offload, recomputed)`; None: resident."
    swapped, offload, recomputed = plan or (0, False, 0)
    pinned = PinnedBlocks(device) if swapped else None                     # as the trainer loads: pinned as read
    model = load_transformer(ckpt, torch.bfloat16, precision, device=device, host_blocks=swapped, progress=False,
                             quantised_dir=quantised_dir, on_host=pinned.add if pinned else None)
    add_lora(model, rank)
    random_lora_factors(model, 0.01)
    model.enable_gradient_checkpointing()
    T, H, W = grid
    tokens = T * H * W
    if plan is None:
        place_model(model, device)
        model.enable_gradient_checkpointing(BlockRunner(model, device))
    else:
        place_model(model, device, swapped, bool(offload), tokens, recomputed, pinned)
    C = model.config.caption_channels
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.config.in_channels, T, 2 * H, 2 * W, generator=g).to(device, torch.bfloat16)
    y = torch.randn(1, 512, C, generator=g).to(device, torch.bfloat16)
    mask = torch.ones(1, 512, dtype=torch.bool, device=device)
    with compute_autocast(device):
        loss = model(x, torch.tensor([500.0], device=device), y, mask).sample.float().square().mean()
    loss.backward()
    grads = {f"{n}.{ab}": getattr(m, ab)["default"].weight.grad.float().cpu()
             for n, m in lora_layers(model).items() for ab in ("lora_A", "lora_B")}
    del model
    if torch.device(device).type == "cuda": torch.cuda.empty_cache()
    return loss.item(), grads


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", nargs="?")
    p.add_argument("--precision", default="int8-quanto")
    p.add_argument("--plans", default="21,1,0;42,1,32")
    p.add_argument("--grid", default="24,30,52", help="latent frames, token rows, token columns (832×480×93)")
    p.add_argument("--json", type=Path)
    p.add_argument("--tiny", action="store_true", help="the tiny checkpoint on this machine's device")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.tiny:
        from longcat_nb.tiny import tiny_checkpoint
        a.ckpt, a.grid, a.precision = tiny_checkpoint(), "2,4,4", "bf16"
        a.plans = "0,0,1" if device == "cpu" else "1,1,0;2,1,1"
    grid = tuple(int(v) for v in a.grid.split(","))
    quantised = "/tmp/grad_check_quantised" if a.precision != "bf16" else None
    t0 = time.time()
    ref_loss, ref = step(a.ckpt, a.precision, device, None, grid, quantised)
    res = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
               precision=a.precision, grid=grid, resident_loss=ref_loss, plans=[])
    for spec in a.plans.split(";"):
        plan = tuple(int(v) for v in spec.split(","))
        loss, grads = step(a.ckpt, a.precision, device, plan, grid, quantised)
        rels = {k: ((grads[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30)).item() for k in ref}
        worst = max(rels, key=rels.get)
        res["plans"].append(dict(swapped=plan[0], offload=bool(plan[1]), recomputed=plan[2], loss=loss,
                                 max_rel_grad_diff=rels[worst], worst=worst, differing=sum(v > 0 for v in rels.values())))
        print(json.dumps(res["plans"][-1]), flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res))
    if a.json: a.json.write_text(json.dumps(res, indent=1))
