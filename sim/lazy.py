"""torch and numpy, imported when first used rather than when a module of `sim` is imported.

Reading, merging and checking settings (`sim.config`, `leadfl-sim sweep --dry-run`, `--help`,
`list-presets`) needs no tensor, yet every component file (where its settings are declared) also
holds the code that trains or aggregates. So those files write `from sim.lazy import torch` (or
`np`, `F`, `nn`, `func`) instead of `import torch`, keep `Tensor` for annotations only (under
`typing.TYPE_CHECKING`, with `from __future__ import annotations`), and use `no_grad` /
`inference_mode` below as decorators: nothing reaches torch until the first attribute is read,
and the library is then imported once, by the ordinary import system.

A name read through a `LazyModule` is looked up in the real module once and kept, so later reads
cost what an attribute of a module costs. Nothing may be evaluated from these at import time (a
default argument, a base class, a module-level constant): that would import the library.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable


class LazyModule:
    """Stands for the module `name` until an attribute is read, then imports it."""

    def __init__(self, name: str):
        object.__setattr__(self, "_lazy_name", name)

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(importlib.import_module(self._lazy_name), attribute)
        object.__setattr__(self, attribute, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"


torch = LazyModule("torch")
nn = LazyModule("torch.nn")
F = LazyModule("torch.nn.functional")
func = LazyModule("torch.func")
np = LazyModule("numpy")


def _within(context: str, doc: str) -> Callable[[Callable], Callable]:
    """A decorator running the function inside `torch.<context>()`, torch imported at the first
    call, not at the definition."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapped(*args, **kwargs):
            with getattr(torch, context)():
                return function(*args, **kwargs)

        return wrapped

    decorate.__doc__ = doc
    return decorate


no_grad = _within("no_grad", "`@torch.no_grad()` that imports torch at the first call, not at the definition.")
inference_mode = _within("inference_mode",
                         "`@torch.inference_mode()` that imports torch at the first call, not at the definition.")
