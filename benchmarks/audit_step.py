"""Op audit of one LoRA training step on the CPU: every aten op with its input/output dtypes and bytes.

Runs the trainer's own step — `training.flow_matching_loss` under a bf16 autocast, backward, gradient clipping,
AdamW — on a small random LongCat-Video (hidden 256, 2 heads of 128, 2 blocks; 560 video tokens, 24 text tokens,
so activation-sized tensors, numel a multiple of 560 and ≥ 560 × 128, are told apart from weights) with bf16 base
weights and an fp32 LoRA, under a `TorchDispatchMode` that records each op. `torch.autocast("cpu", torch.bfloat16)`
stands in for the trainer's CUDA autocast (`model.compute_autocast`): the two share the cast policy of linear/matmul.
Each op is tagged with its phase: forward, recompute (a checkpointed block's forward run again inside the backward),
backward, optimizer. `--bare` runs bench_model.py's loop instead: bf16 LoRA (PEFT's `add_adapter`), no autocast,
MSE to a random target.

    python benchmarks/audit_step.py                          # the trainer's step as configured by the trainer
    python benchmarks/audit_step.py --lora-cast on           # PEFT's fp32 cast of each LoRA input (the old default)
    python benchmarks/audit_step.py --checkpoint-attention keep
    python benchmarks/audit_step.py --bare                   # bench_model.py's loop
    python benchmarks/audit_step.py --json audit.json        # also write the summary

Prints a summary table; `audit()` returns the same summary as a dict (tests and nbs/07_training.ipynb use it).
"""
import argparse, json
from collections import Counter, defaultdict
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from longcat_nb.lora import add_lora, set_lora_input_cast
from longcat_nb.model import (ATTENTION_OPS, TINY_DIT_CONFIG, LongCatVideoTransformer3DModel, checkpoint_keeping_attention)
from longcat_nb.training import flow_matching_loss

AUDIT_DIT = dict(TINY_DIT_CONFIG, hidden_size=256, num_heads=2, caption_channels=64, depth=2)
AUDIT_LATENTS = (1, 16, 4, 20, 28)      # → 4 × 10 × 14 = 560 tokens
AUDIT_TEXT_TOKENS = 24
COPY_OPS = {"copy_.default", "clone.default", "_to_copy.default", "contiguous.default"}


def _tensors(tree) -> list:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class OpRecorder(TorchDispatchMode):
    """Records `(phase, module, op, input dtypes, output dtype, output bytes, activation-sized)` for every aten op
    that makes a new tensor (views are skipped). Activation-sized: numel a multiple of `tokens` and ≥ tokens × 128."""
    def __init__(self, model, tokens: int):
        super().__init__()
        self.tokens, self.records, self.phase, self.stack = tokens, [], "forward", []
        self.handles = []
        for name, m in model.named_modules():
            short = ".".join(p for p in name.split(".") if not p.isdigit() and p != "default") or "model"
            self.handles.append(m.register_forward_pre_hook(lambda m, a, s=short: self.stack.append(s)))
            self.handles.append(m.register_forward_hook(lambda m, a, o: self._pop(), always_call=True))

    def _pop(self): self.stack.pop()          # returns None: a forward hook's return value would replace the output

    def remove(self):
        for h in self.handles: h.remove()

    def where(self) -> str:
        "The phase of the op running now: a block's forward inside the backward is its checkpoint recompute."
        return "recompute" if self.phase == "backward" and self.stack else self.phase

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = _tensors((args, kwargs))
        in_ptrs = {t.untyped_storage().data_ptr() for t in ins if t.device.type != "meta"}
        for i, t in enumerate(_tensors(out)):
            if t.untyped_storage().data_ptr() in in_ptrs: continue          # a view or an in-place result
            n = t.numel()
            self.records.append(dict(phase=self.where(), module=self.stack[-1] if self.stack else "-", op=func.__name__,
                                     in_dtypes=tuple(str(i.dtype).removeprefix("torch.") for i in ins),
                                     dtype=str(t.dtype).removeprefix("torch."), bytes=n * t.element_size(),
                                     act=n % self.tokens == 0 and n >= self.tokens * 128,
                                     key_tokens=args[1].shape[-2] if func in ATTENTION_OPS and i == 0 else None))
        return out


def build(bare: bool = False, lora_cast: bool = False, keep_attention: bool = False, rank: int = 4, dropout: float = 0.0,
          seed: int = 0, config: dict = AUDIT_DIT):
    """The audited model: random bf16 base, LoRA on the default targets (fp32 as the trainer attaches it, or bf16 as
    bench_model.py's `add_adapter` does when `bare`) with random non-zero factors, per-block gradient checkpointing."""
    g = torch.Generator().manual_seed(seed)
    model = LongCatVideoTransformer3DModel(**config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn(p.shape, generator=g) * 0.05)
    model = model.to(torch.bfloat16)
    if bare:
        from peft import LoraConfig
        from longcat_nb.config import LORA_TARGETS
        model.requires_grad_(False)
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, target_modules=list(LORA_TARGETS)))
    else:
        add_lora(model, rank, dropout=dropout)
        set_lora_input_cast(model, lora_cast)
    with torch.no_grad():                                  # lora_B starts at 0 in PEFT: no gradient for lora_A then
        for name, p in model.named_parameters():
            if p.requires_grad: p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.enable_gradient_checkpointing(checkpoint_keeping_attention if keep_attention else None)
    return model.train()


def make_batch(config: dict = AUDIT_DIT, seed: int = 1, num_cond_latents: int = 0, device="cpu"):
    "A cached-batch dict as `CachedDataset` gives it (on `device`), with σ, caption dropout, noise and the empty prompt."
    g = torch.Generator().manual_seed(seed)
    L, C = AUDIT_TEXT_TOKENS, config["caption_channels"]
    batch = dict(latents=torch.randn(AUDIT_LATENTS, generator=g).to(device),
                 text_emb=torch.randn(1, L, C, generator=g).to(device, torch.bfloat16),
                 text_mask=torch.ones(1, L, dtype=torch.long, device=device), num_cond_latents=num_cond_latents)
    empty = (torch.zeros(L, C, dtype=torch.bfloat16, device=device), torch.zeros(L, dtype=torch.long, device=device))
    return batch, torch.tensor([0.7]), torch.tensor([False]), torch.randn(AUDIT_LATENTS, generator=g), empty


def trainer_step(model, batch, autocast: bool = True, recorder: OpRecorder | None = None) -> tuple[float, dict]:
    """The trainer's step (`_optimizer_step_grads` + `_optimizer_step` without accelerate): loss, backward, clip, AdamW;
    `autocast`: a bf16 autocast for the batch's device, as `model.compute_autocast` enters on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rec = recorder or nullcontext()
    device = batch[0]["latents"].device.type
    with rec:
        with torch.autocast(device, dtype=torch.bfloat16) if autocast else nullcontext():
            loss = flow_matching_loss(model, *batch)
        if recorder: recorder.phase = "backward"
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        if recorder: recorder.phase = "optimizer"
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
    return loss.item(), grads


def bare_step(model, batch, recorder: OpRecorder | None = None) -> float:
    "bench_model.py's `lora_part` step: no autocast, MSE of the output to a random target, backward, AdamW."
    b, sigma, _, noise, _ = batch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    x = (1 - sigma) * b["latents"] + sigma * noise
    target = torch.randn_like(x)
    with recorder or nullcontext():
        loss = F.mse_loss(model(x, 1000 * sigma, b["text_emb"], b["text_mask"]).sample, target)
        if recorder: recorder.phase = "backward"
        loss.backward()
        if recorder: recorder.phase = "optimizer"
        opt.step(); opt.zero_grad(set_to_none=True)
    return loss.item()


def summarise(records: list, tokens: int, depth: int) -> dict:
    """Per phase: activation-sized dtype casts (`_to_copy` that changes dtype) by direction, same-dtype copies, new fp32
    activation-sized tensors by module, and self-attention forward calls (key length = tokens). Bytes are output bytes;
    `*_B_per_token_block` divides by tokens × depth."""
    out = dict(tokens=tokens, depth=depth, ops=len(records), casts=defaultdict(Counter), cast_bytes=defaultdict(Counter),
               copies=Counter(), copy_bytes=Counter(), fp32_act=Counter(), fp32_act_bytes=Counter(),
               fp32_by_module=defaultdict(Counter), attention_forward=Counter())
    for r in records:
        p = r["phase"]
        if r["key_tokens"] == tokens and "backward" not in r["op"]: out["attention_forward"][p] += 1
        if not r["act"]: continue
        if r["op"] == "_to_copy.default" and r["in_dtypes"][0] != r["dtype"]:
            d = f"{r['in_dtypes'][0]}->{r['dtype']}"
            out["casts"][p][d] += 1; out["cast_bytes"][p][d] += r["bytes"]
        elif r["op"] in COPY_OPS:
            out["copies"][p] += 1; out["copy_bytes"][p] += r["bytes"]
        if r["dtype"] == "float32":
            out["fp32_act"][p] += 1; out["fp32_act_bytes"][p] += r["bytes"]
            out["fp32_by_module"][p][r["module"]] += r["bytes"]
    per = tokens * depth
    out["cast_B_per_token_block"] = {p: round(sum(c.values()) / per, 1) for p, c in out["cast_bytes"].items()}
    out["fp32_act_B_per_token_block"] = {p: round(b / per, 1) for p, b in out["fp32_act_bytes"].items()}
    return json.loads(json.dumps(out))                   # plain dicts


def audit(bare: bool = False, lora_cast: bool = False, keep_attention: bool = False, num_cond_latents: int = 0,
          dropout: float = 0.0) -> dict:
    "Build, run one recorded step, summarise; the summary also holds the step's loss."
    model = build(bare, lora_cast, keep_attention, dropout=dropout)
    batch = make_batch(num_cond_latents=num_cond_latents)
    tokens = AUDIT_LATENTS[2] * (AUDIT_LATENTS[3] // 2) * (AUDIT_LATENTS[4] // 2)
    rec = OpRecorder(model, tokens)
    loss = bare_step(model, batch, rec) if bare else trainer_step(model, batch, recorder=rec)[0]
    rec.remove()
    return dict(summarise(rec.records, tokens, model.config.depth), loss=loss,
                variant=dict(bare=bare, lora_cast=lora_cast, keep_attention=keep_attention, num_cond_latents=num_cond_latents))


def table(s: dict) -> str:
    "The summary as text lines, one per phase."
    lines = [f"{s['variant']}: {s['ops']} ops, {s['tokens']} tokens × {s['depth']} blocks, loss {s['loss']:.5f}",
             f"{'phase':<10} {'attn fwd':>8} {'casts (bytes/token/block)':<44} {'copies':>6} {'fp32 act B/token/block':>22}"]
    for p in ("forward", "recompute", "backward", "optimizer"):
        casts = ", ".join(f"{d} ×{n}" for d, n in sorted(s["casts"].get(p, {}).items()))
        lines.append(f"{p:<10} {s['attention_forward'].get(p, 0):>8} {(casts or '-') + ' (' + str(s['cast_B_per_token_block'].get(p, 0)) + ')':<44} "
                     f"{s['copies'].get(p, 0):>6} {s['fp32_act_B_per_token_block'].get(p, 0):>22}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bare", action="store_true", help="bench_model.py's loop: bf16 LoRA, no autocast")
    p.add_argument("--lora-cast", choices=("on", "off"), default="off", help="PEFT's fp32 cast of LoRA inputs (trainer: off under autocast)")
    p.add_argument("--checkpoint-attention", choices=("keep", "recompute"), default="recompute")
    p.add_argument("--i2v", action="store_true", help="one conditioning latent frame (num_cond_latents = 1)")
    p.add_argument("--json", help="also write the summary here")
    a = p.parse_args(argv)
    s = audit(a.bare, a.lora_cast == "on", a.checkpoint_attention == "keep", int(a.i2v))
    print(table(s))
    for phase, mods in s["fp32_by_module"].items():
        top = sorted(mods.items(), key=lambda kv: -kv[1])[:6]
        print(f"fp32 activation bytes, {phase}: " + ", ".join(f"{m} {b / (s['tokens'] * s['depth']):.0f} B/tok/blk" for m, b in top))
    if a.json:
        with open(a.json, "w") as f: json.dump(s, f, indent=1)


if __name__ == "__main__":
    main()
