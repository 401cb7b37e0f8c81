"""The fused q/k RMSNorm + RoPE kernel (`kernels.qk_norm_rope_triton`, issue 22) against `model.qk_norm_rope`: the op
alone (fp32 and bf16, head dims 32 and 128, gradients of qkv and both norm weights), traced by torch.compile
(fullgraph), and wired into the tiny model's self-attention (`fused_elementwise` "triton"): eager, checkpointed under a
bf16 autocast, and in compiled blocks. On the CPU the kernels run under Triton's interpreter, in one fresh process
(Triton reads TRITON_INTERPRET at its first import); the kernels are also compiled for sm_90 without a GPU.
"""
import importlib.util, json, os, subprocess, sys, tempfile
from pathlib import Path
from unittest import mock

import pytest
import torch
from background import Background

from longcat_nb import kernels, model as M

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SCRIPT = r"""
import json, math, torch
from longcat_nb import kernels as K, model as M
from longcat_nb.model import TINY_DIT_CONFIG, LongCatVideoTransformer3DModel, checkpoint_keeping_attention

def steps(a, b):
    "Largest distance of `a` from `b` in bf16 steps (2^-7 of the power of two at or below the larger magnitude)."
    big = torch.maximum(a.float().abs(), b.float().abs())
    step = torch.ldexp(torch.ones_like(big), torch.frexp(big).exponent - 8)
    return ((a.float() - b.float()).abs() / step).max().item()

def rel(a, b): return ((a.float() - b.float()).norm() / b.float().norm()).item()

def op_case(fn, B, heads, d, grid, dtype, wdtype, weights_grad=True):
    g = torch.Generator().manual_seed(0)
    N, C = math.prod(grid), heads * d
    qkv = (2 * torch.randn(B, N, 3 * C, generator=g) + 0.5).to(dtype).requires_grad_()
    qw, kw = ((1 + 0.3 * torch.randn(d, generator=g)).to(wdtype).requires_grad_(weights_grad) for _ in range(2))
    outs = fn(qkv, heads, qw, kw, 1e-6, *M.rope_3d(grid, d))
    torch.autograd.backward(outs, [torch.randn(o.shape, generator=g).to(dtype) for o in outs])
    return [o.detach() for o in outs] + [qkv.grad, qw.grad, kw.grad]

out = {}
names = ("q", "k", "v", "dqkv", "dq_weight", "dk_weight")
for case in [(1, 2, 32, (3, 4, 9), "float32", "float32"), (2, 2, 128, (2, 5, 10), "float32", "float32"),
             (2, 2, 128, (2, 5, 10), "bfloat16", "bfloat16"), (1, 2, 32, (3, 4, 9), "bfloat16", "float32"),
             (2, 2, 128, (1, 7, 11), "bfloat16", "float32")]:
    args = case[:4] + (getattr(torch, case[4]), getattr(torch, case[5]))
    got, ref = op_case(K.qk_norm_rope_triton, *args), op_case(M.qk_norm_rope, *args)
    out["op_" + "_".join(map(str, case[:3] + case[4:]))] = {
        n: dict(dtype=str(a.dtype), shape=list(a.shape), same_dtype_shape=a.dtype == r.dtype and a.shape == r.shape,
                contiguous=a.is_contiguous(), rel=rel(a, r), max_abs=(a.float() - r.float()).abs().max().item(),
                steps=steps(a, r)) for n, a, r in zip(names, got, ref)}
got = op_case(K.qk_norm_rope_triton, 1, 2, 32, (3, 4, 9), torch.bfloat16, torch.bfloat16, weights_grad=False)
out["frozen_weights"] = [g is None for g in got[4:]]

compiled = torch.compile(K.qk_norm_rope_triton, backend="aot_eager", fullgraph=True)
small = (2, 2, 32, (2, 3, 5), torch.float32, torch.float32)
got, ref = op_case(compiled, *small), op_case(M.qk_norm_rope, *small)
out["compiled_op"] = {n: rel(a, r) for n, a, r in zip(names, got, ref)}

def tiny(qk):
    "The tiny model (random weights), its self-attentions on the Triton kernel when `qk` (everything else eager)."
    torch.manual_seed(0)
    m = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG)
    for p in m.parameters(): p.data.normal_(0, 0.2)
    m.set_qk_kernel(qk)                                     # the trainer's and the sampler's switch
    return m.train()

def step(m, autocast=False):
    g = torch.Generator().manual_seed(1)
    inp = dict(hidden_states=torch.randn(2, 16, 3, 4, 6, generator=g), timestep=torch.tensor([250.0, 800.0]),
               encoder_hidden_states=torch.randn(2, 1, 6, TINY_DIT_CONFIG["caption_channels"], generator=g),
               num_cond_latents=1)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast): sample = m(**inp).sample
    sample.float().square().mean().backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    return sample.detach(), grads

def compare(a, b):
    (sa, ga), (sb, gb) = a, b
    return dict(out=rel(sa, sb), grads=max(rel(ga[n], gb[n]) for n in gb), n_grads=len(ga))

exact = step(tiny(False))                                       # fp32, eager torch ops: the reference
out["model_fp32"] = compare(step(tiny(True)), exact)
plain_bf16 = tiny(False).to(torch.bfloat16); plain_bf16.enable_gradient_checkpointing(checkpoint_keeping_attention)
fused_bf16 = tiny(True).to(torch.bfloat16); fused_bf16.enable_gradient_checkpointing(checkpoint_keeping_attention)
plain_bf16, fused_bf16 = step(plain_bf16, True), step(fused_bf16, True)
out["model_bf16_vs_plain"] = compare(fused_bf16, plain_bf16)
out["model_bf16_fused_vs_fp32"] = compare(fused_bf16, exact)
out["model_bf16_plain_vs_fp32"] = compare(plain_bf16, exact)
m = tiny(True); m.enable_gradient_checkpointing(); m.compile_blocks(backend="aot_eager", fullgraph=True)
out["model_compiled"] = compare(step(m), exact)
print(json.dumps(out))
"""


INTERPRETED = Background([sys.executable, "-c", SCRIPT], env=os.environ | dict(TRITON_INTERPRET="1")) \
    if importlib.util.find_spec("triton") else None                      # queued at collection (tests/background.py)
LEVERS_DIR = tempfile.TemporaryDirectory()
LEVERS = Background([sys.executable, "benchmarks/bench_levers.py", "--tiny", "--steps", "1", "--variants", "plain",
                     "both", "compiled_both", "--json", Path(LEVERS_DIR.name) / "levers.json"],
                    env=os.environ | dict(TRITON_INTERPRET="1")) if importlib.util.find_spec("triton") else None


@pytest.fixture(scope="module")
def interpreted():
    "Every comparison, from one fresh TRITON_INTERPRET=1 process."
    r = INTERPRETED.result()
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_triton
def test_op_matches_reference_within_one_rounding(interpreted):
    """fp32: outputs and gradients to float rounding; bf16: q, k, the qkv gradient (and bf16 weight gradients) within
    one bf16 step of the reference (both round one fp32 value; the interpreter toward zero), v exact; dtypes, shapes and
    the [B, heads, N, d] layout as the reference's."""
    cases = {k: v for k, v in interpreted.items() if k.startswith("op_")}
    assert len(cases) == 5
    for case, errs in cases.items():
        for name, e in errs.items():
            assert e["same_dtype_shape"] and (name.startswith("d") or e["contiguous"]), (case, name, e)
            if e["dtype"] == "torch.float32": assert e["rel"] < 1e-6, (case, name, e)
            else: assert e["steps"] <= 1.0, (case, name, e)
        assert errs["v"]["max_abs"] == 0, (case, errs["v"])


@needs_triton
def test_op_frozen_weights_and_compiled(interpreted):
    "Frozen norm weights get no gradient; torch.compile(fullgraph=True) traces the op, forward and backward."
    assert interpreted["frozen_weights"] == [True, True]
    for name, err in interpreted["compiled_op"].items(): assert err < 1e-6, (name, err)


@needs_triton
def test_model_self_attention_on_the_kernel(interpreted):
    """The tiny model with its self-attentions on the kernel (one conditioning frame): fp32 eager and compiled blocks
    give the torch path's output and gradients; bf16 autocast, checkpointed keeping attention: within bf16 noise of
    the plain bf16 path, and as close to the fp32 reference as that path is."""
    for key in ("model_fp32", "model_compiled"):
        assert interpreted[key]["out"] < 1e-5 and interpreted[key]["grads"] < 1e-4, (key, interpreted[key])
        assert interpreted[key]["n_grads"] > 50, interpreted[key]
    fused, plain, both = (interpreted[k] for k in ("model_bf16_fused_vs_fp32", "model_bf16_plain_vs_fp32",
                                                    "model_bf16_vs_plain"))
    assert both["out"] < 2e-2 and both["grads"] < 5e-2, both
    assert fused["out"] <= 1.25 * plain["out"] + 1e-3 and fused["grads"] <= 1.25 * plain["grads"] + 1e-3, (fused, plain)


def test_triton_setting_compiles_the_rest_with_inductor():
    """`fused_elementwise` "triton": self-attention calls the kernel (also while dynamo traces a block), every other
    function compiles with inductor; never a default."""
    fn = lambda x: x + 1
    with mock.patch.object(torch, "compile", return_value=fn) as compile_:
        M.fused(fn, "triton")
    assert compile_.call_args.kwargs["backend"] == "inductor"
    M._FUSED.pop((fn, "inductor"), None)
    attn = M.SelfAttention(64, 2)
    attn.fused_elementwise = "triton"
    with mock.patch.object(M, "qk_norm_rope_triton", side_effect=M.qk_norm_rope) as kernel:
        attn(torch.randn(1, 6, 64), M.rope_3d((1, 2, 3), 32))
        with mock.patch.object(torch.compiler, "is_compiling", return_value=True):
            attn(torch.randn(1, 6, 64), M.rope_3d((1, 2, 3), 32))
    assert kernel.call_count == 2
    assert M.SelfAttention.fused_elementwise is None
    assert M.fused_elementwise_wanted("on", "cuda", False) is True      # the config's "on" stays inductor


def test_fused_qk_norm_rope_setting(tmp_path):
    """`fused_qk_norm_rope`: `auto` runs the kernel on CUDA GPUs of sm_80 on unless blocks stream, `on` on every CUDA
    run, never on the CPU; the trainer's `make_trainable` and the sampler's pipeline switch every self-attention as it
    says."""
    from longcat_nb import training
    from longcat_nb.config import parse_config
    from longcat_nb.caching import default_device
    from longcat_nb.service import Sampler
    from longcat_nb.tiny import tiny_checkpoint
    with mock.patch.object(torch.cuda, "get_device_capability", return_value=(7, 5)):     # a T4: auto leaves it
        assert not M.cuda_ampere("cuda") and not M.fused_qk_wanted("auto", "cuda") and M.fused_qk_wanted("on", "cuda")
    ampere = mock.patch.object(torch.cuda, "get_device_capability", return_value=(9, 0))   # as on an H100 / H200
    with ampere:
        table = {(s, d, streamed): M.fused_qk_wanted(s, d, streamed)
                 for s in ("off", "auto", "on") for d in ("cpu", "cuda") for streamed in (False, True)}
    assert [k for k, on in table.items() if on] == [("auto", "cuda", False), ("on", "cuda", False), ("on", "cuda", True)]
    kernels_on = lambda model: {m.qk_kernel for m in model.modules() if isinstance(m, M.SelfAttention)}
    for keys, device, want in (({}, "cuda", True), ({"musubi_blocks_to_swap": 1}, "cuda", False),
                               ({"fused_qk_norm_rope": "on", "musubi_blocks_to_swap": 1}, "cuda", True),
                               ({"fused_qk_norm_rope": "off"}, "cuda", False), ({}, "cpu", False)):
        model = M.LongCatVideoTransformer3DModel(**M.TINY_DIT_CONFIG)   # `make_trainable` touches no CUDA memory
        with ampere:
            training.make_trainable(model, parse_config({"lora_rank": 4, "compile_transformer": False, **keys}),
                                    device=device)
        assert kernels_on(model) == {want}, (keys, device)
    cfg = parse_config({"pretrained_model_name_or_path": str(tiny_checkpoint()), "output_dir": str(tmp_path)})
    sampler = Sampler()
    device = default_device()                                                      # where the sampler runs
    with mock.patch.object(M, "fused_qk_wanted", return_value=True) as wanted:     # as on a GPU
        assert kernels_on(sampler.pipeline(cfg).transformer) == {True}
    assert wanted.call_args.args == ("auto", device, False)
    here = M.fused_qk_wanted("auto", device, False)                                # off on a CPU, on on an H100
    assert kernels_on(sampler.pipeline(cfg).transformer) == {here}                 # the same pipeline, unmocked
    assert sampler.loads == 1


def test_compile_transformer_auto():
    """`compile_transformer` null (auto) compiles the blocks of a training run where that was measured: bf16 base,
    dense attention or block-sparse through the Triton op (not FlexAttention, which compiles itself), resident blocks, a
    CUDA GPU of sm_80 on, no FSDP; as set otherwise. (`longcat-nb sample` adds a forward count to the same rule:
    `service.sample_compiles`, tested in nbs/07a_service.ipynb.)"""
    from longcat_nb import training
    from longcat_nb.config import parse_config
    cfg = lambda **keys: parse_config({"lora_rank": 4, **keys})
    with mock.patch.object(torch.cuda, "get_device_capability", return_value=(9, 0)):
        assert training.compiles_blocks(cfg(), "cuda") and not training.compiles_blocks(cfg(), "cpu")
        assert not training.compiles_blocks(cfg(), "cuda", fsdp=True)
        for other in ({"musubi_blocks_to_swap": 2}, {"activation_offload": True}, {"recomputed_block_inputs": 4},
                      {"base_model_precision": "int8-quanto"},
                      {"attention_implementation": "bsa", "bsa_kernel": "flex"}):
            assert not training.compiles_blocks(cfg(**other), "cuda"), other            # not measured compiled
        for kernel in ("auto", "triton"):                                           # 6.29 s against 8.68 eager, H100
            assert training.compiles_blocks(cfg(attention_implementation="bsa", bsa_kernel=kernel), "cuda"), kernel
        assert not training.compiles_blocks(cfg(compile_transformer=False), "cuda")
    with mock.patch.object(torch.cuda, "get_device_capability", return_value=(7, 5)):
        assert not training.compiles_blocks(cfg(), "cuda")
    assert training.compiles_blocks(cfg(compile_transformer=True), "cpu")           # as set


def test_auto_settings_need_triton(monkeypatch):
    """Without triton (Windows, macOS) the `auto` settings leave generated kernels off on any GPU — the q/k kernel,
    compiled blocks, inductor-fused elementwise work, the Triton / Flex sparse steps — and run the plain torch ops;
    with it they are on. (`on` / `true` stay as set.)"""
    from longcat_nb import kernels, training
    from longcat_nb.config import parse_config
    monkeypatch.delenv("LONGCAT_BSA_KERNEL", raising=False)
    cfg = parse_config({"lora_rank": 4})
    cuda = torch.device("cuda")
    autos = lambda: (M.fused_qk_wanted("auto", cuda), training.compiles_blocks(cfg, cuda),
                     M.fused_elementwise_wanted("auto", cuda, False, streamed=True),
                     kernels._sparse_kernel("auto", cuda) != "gathered")
    with mock.patch.object(torch.cuda, "get_device_capability", return_value=(9, 0)):
        for installed in (True, False):
            with mock.patch.object(M, "triton_installed", return_value=installed), \
                    mock.patch.object(kernels, "triton_installed", return_value=installed):
                assert autos() == (installed,) * 4, installed
                assert M.fused_qk_wanted("on", cuda)
                assert training.compiles_blocks(parse_config({"compile_transformer": True}), cuda)


@needs_triton
def test_kernels_compile_for_h200_without_spills():
    """bf16, 32 heads × 128: forward and backward compile for sm_90 (Triton's bundled ptxas, no GPU) at the launch
    settings `_qk_launch` uses, with every value in registers (cuobjdump: no stack). Not a speed measurement."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.interpreter import InterpretedFunction
    if isinstance(triton.language.zeros, InterpretedFunction): pytest.skip("this process runs triton interpreted")
    qkv = torch.empty(1, 37_440, 3 * 4096, dtype=torch.bfloat16, device="meta")
    with mock.patch.object(torch.Tensor, "is_cuda", True):
        fwd, bwd, grid, kw, interpret = kernels._qk_launch(qkv, 32)
    assert not interpret and grid == (37_440 // 16, 32)
    types = dict(N="i32", C="i32", eps="fp32", COS="*fp32", SIN="*fp32", GW="*fp32")
    cuobjdump = os.path.join(triton.__path__[0], "backends", "nvidia", "bin", "cuobjdump")
    for fn in (fwd, bwd):
        consts = {n: v for n, v in kw.items() if n in fn.arg_names}
        sig = {n: "constexpr" if n in consts else types.get(n, "*bf16") for n in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=kw["num_warps"]))
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"longcat_{fn.__name__}_{os.getpid()}.cubin")
        with open(path, "wb") as f: f.write(compiled.asm["cubin"])
        usage = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        os.remove(path)
        assert "STACK:0 " in usage, (fn.__name__, usage)


@needs_triton
def test_bench_levers_runs_tiny(tmp_path):
    """`benchmarks/bench_levers.py --tiny` (CPU, interpreter, aot_eager): every lever's variant runs, the numbers stay
    within bf16 noise of the plain path, and the JSON carries its provenance."""
    out = Path(LEVERS_DIR.name) / "levers.json"
    r = LEVERS.result()                                             # bench_levers.py --tiny, queued at collection
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(out.read_text())
    assert {"date", "commit", "gpu", "torch", "command"} <= set(res)
    assert list(res["block"]) == ["plain", "both", "compiled_both"]
    for name in ("both", "compiled_both"):
        assert res["block"][name]["output_rel_diff"] < 1e-2 and res["block"][name]["max_grad_rel_diff"] < 3e-2, res
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import tables                                                  # issue 22's per-lever table renders it
    named = tmp_path / "results" / "levers_cpu_2026-12-05.json"
    named.parent.mkdir()
    named.write_text(out.read_text())
    with mock.patch.object(tables, "RESULTS", named.parent):
        table = tables.levers()
    assert "| compiled_both | LoRA epilogue, q/k norm + RoPE: triton, compiled (keeping attention) |" in table, table
    assert "The q/k norm + RoPE alone" in table and "levers_cpu_2026-12-05.json" in table
    assert set(res["qk_alone"]) == {"eager", "inductor", "triton"}
    assert all(v["q_rel_vs_fp32"] < 1e-2 and v["k_rel_vs_fp32"] < 1e-2 for v in res["qk_alone"].values())
    assert all(v["output_rel_diff"] < 1e-2 for k, v in res["lora_alone"].items() if k.endswith("_epilogue"))


@cuda
@needs_triton
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32])
def test_op_on_cuda_full_heads(wdtype):
    """32 heads × 128, 4,100 tokens (not a multiple of the tile), bf16 qkv on the GPU: q, k and the qkv gradient as
    close to the fp32 computation as `model.qk_norm_rope`'s (both round one fp32 value; over 16 M values a few land
    near zero, where one bf16 step of the smaller result is not a fair yardstick — hence norms, not steps), v exact,
    the norm weights' gradients to fp32 summation order."""
    g = torch.Generator(device="cuda").manual_seed(0)
    grid, heads, d = (4, 25, 41), 32, 128
    N = grid[0] * grid[1] * grid[2]
    rope = M.rope_3d(grid, d, "cuda")
    qkv0 = (2 * torch.randn(1, N, 3 * heads * d, device="cuda", generator=g) + 0.5).bfloat16()
    w0 = [(1 + 0.3 * torch.randn(d, device="cuda", generator=g)).to(wdtype) for _ in range(2)]
    grads = [torch.randn(1, heads, N, d, device="cuda", generator=g).bfloat16() for _ in range(3)]
    results = []
    for fn, dtype in ((kernels.qk_norm_rope_triton, None), (M.qk_norm_rope, None), (M.qk_norm_rope, torch.float32)):
        qkv, qw, kw = (t.to(dtype or t.dtype).clone().requires_grad_() for t in (qkv0, *w0))
        outs = fn(qkv, heads, qw, kw, 1e-6, *rope)
        torch.autograd.backward(outs, [t.to(dtype or t.dtype) for t in grads])
        results.append([o.detach().float() for o in outs] + [qkv.grad.float(), qw.grad.float(), kw.grad.float()])
    rel = lambda a, r: ((a - r).norm() / r.norm()).item()
    for name, a, r, exact in zip(("q", "k", "v", "dqkv", "dq_weight", "dk_weight"), *results):
        ours, torchs = rel(a, exact), rel(r, exact)
        print(f"qk_norm_rope on CUDA, {name}: kernel {ours:.3e}, torch {torchs:.3e} from fp32; {rel(a, r):.2e} apart")
        if name == "v": assert torch.equal(a, r), name
        elif name.endswith("weight"): assert rel(a, r) < (1e-5 if wdtype == torch.float32 else 8e-3), (name, rel(a, r))
        else: assert ours <= 1.05 * torchs + 1e-6 and ours < 4e-3, (name, ours, torchs)
