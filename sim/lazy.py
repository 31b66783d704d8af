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


def no_grad(function: Callable) -> Callable:
    """`@torch.no_grad()` that imports torch at the first call, not at the definition."""

    @functools.wraps(function)
    def without_grad(*args, **kwargs):
        with torch.no_grad():
            return function(*args, **kwargs)

    return without_grad


def inference_mode(function: Callable) -> Callable:
    """`@torch.inference_mode()` that imports torch at the first call, not at the definition."""

    @functools.wraps(function)
    def in_inference_mode(*args, **kwargs):
        with torch.inference_mode():
            return function(*args, **kwargs)

    return in_inference_mode
