"""The public namespace says what users call and how: every module's `__all__` is free of test references and helpers
(they live in `longcat_nb.testing`, which no library module imports), and every public function or method that takes
`**kwargs` shows where they go.

The `__all__` rule. Denied: a name containing `reference` (a slow definition a fast path is checked against), a name
starting with `test_`, `fake_` or `mock_`, or ending in `_for_tests`, and `output_and_grads` (the gradient-comparison
helper). Allowed despite the pattern: `config_reference`, the config's key table that the README prints (a reference
in the documentation sense, called by users and tools). Everything else a module exports is taken as meant for users.
"""
import importlib, inspect, pkgutil, re
from pathlib import Path

import pytest

import longcat_nb

DENY = re.compile(r"reference|^test_|^fake_|^mock_|_for_tests$|^output_and_grads$")
ALLOW = {"config_reference"}
LIBRARY = [m.name for m in pkgutil.iter_modules(longcat_nb.__path__)
           if not m.name.startswith("_") and m.name != "testing"]


def module(name): return importlib.import_module(f"longcat_nb.{name}")


@pytest.mark.parametrize("name", LIBRARY)
def test_all_lists_no_test_helpers(name):
    bad = [n for n in module(name).__all__ if DENY.search(n) and n not in ALLOW]
    assert not bad, f"longcat_nb.{name}.__all__ exports test helpers {bad}: move them to nbs/12_testing.ipynb"


def test_the_rule_catches_what_it_should():
    "The deny pattern flags the names that used to be exported and spares the allowed one."
    for n in ("block_sparse_reference", "masked_attention_reference", "output_and_grads", "fake_batch"):
        assert DENY.search(n), n
    assert DENY.search("config_reference") and "config_reference" in ALLOW
    assert not DENY.search("block_sparse_attention") and not DENY.search("gathered_attention")


def test_library_never_imports_testing():
    "Layering: the testing module sits above everything; no library module imports it."
    for path in Path(longcat_nb.__file__).parent.glob("*.py"):
        if path.name in ("testing.py", "_modidx.py"): continue
        text = path.read_text()
        assert not re.search(r"longcat_nb\.testing|from \.testing|from \. import testing", text), path.name
    assert "testing" in [m.name for m in pkgutil.iter_modules(longcat_nb.__path__)]


def public_callables():
    "(qualified name, function) for every public function and method the library's `__all__` lists."
    for name in LIBRARY:
        mod = module(name)
        for n in mod.__all__:
            obj = getattr(mod, n)
            if inspect.isfunction(obj): yield f"{name}.{n}", obj
            elif inspect.isclass(obj) and obj.__module__.startswith("longcat_nb"):
                for m, f in vars(obj).items():
                    f = f.__func__ if isinstance(f, (staticmethod, classmethod)) else f
                    if inspect.isfunction(f) and (not m.startswith("_") or m == "__call__"): yield f"{name}.{n}.{m}", f


def var_keyword(f):
    "The name of `f`'s `**` parameter in its code (whatever its signature says), or None."
    code = f.__code__
    if not code.co_flags & inspect.CO_VARKEYWORDS: return None
    return code.co_varnames[code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)]


def test_kwargs_show_their_target():
    """A public `**name` either delegates (the signature shows the target's parameters instead of `**name`) or the
    docstring names `name` (or `**name`) and so where it goes."""
    found, bad = [], []
    for qual, f in public_callables():
        kw = var_keyword(f)
        if kw is None: continue
        found.append(qual)
        sig = inspect.signature(f)
        delegated = all(p.kind != p.VAR_KEYWORD for p in sig.parameters.values()) and \
            set(sig.parameters) - set(f.__code__.co_varnames[:f.__code__.co_argcount + f.__code__.co_kwonlyargcount])
        documented = re.search(rf"`\*\*{kw}\b|`{kw}`|\*\*{kw}\)", f.__doc__ or "")
        if not (delegated or documented): bad.append(qual)
    assert "sampling.LongCatVideoPipeline.continue_video" in found      # the scan sees patched methods
    assert not bad, f"**kwargs without a delegated signature or a documented target: {bad}"


def test_continuation_shows_call_parameters():
    "`continue_video` and `generate_long_video` show `__call__`'s keywords (tab-completion), not `**kwargs`."
    from longcat_nb.sampling import LongCatVideoPipeline
    for f in (LongCatVideoPipeline.continue_video, LongCatVideoPipeline.generate_long_video):
        params = inspect.signature(f).parameters
        assert "kwargs" not in params and {"guidance_scale", "t_thresh"} <= set(params), (f.__name__, list(params))
