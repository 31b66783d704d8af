"""Python face of the fused LeadFL ops (``torch.ops.leadfl``)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch

TensorOrList = Union[torch.Tensor, Sequence[torch.Tensor]]
Alpha = Union[float, torch.Tensor]


def _as_list(value: TensorOrList, name: str) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            if not isinstance(item, torch.Tensor):
                raise TypeError(f"{name}[{k}] is a {type(item).__name__}; {name} must hold only tensors")
        return list(value)
    raise TypeError(f"{name} must be a tensor or a list/tuple of tensors, got {type(value).__name__}")


def _split_alpha(alpha: Alpha) -> tuple[float, torch.Tensor | None]:
    """A float goes to the scalar slot; a 1-D tensor becomes the per-row alpha."""
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() == 0:
            return float(alpha), None
        return 0.0, alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float or a 1-D tensor (one value per row), got {alpha!r}")
    return float(alpha), None


def _as_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {value!r}")
    return float(value)


def _check_hyperparameters(op: str, lr: float, alpha: float, q: float, identity: float = 1.0) -> None:
    """Same rules as the C++ kernels; used where no kernel runs (an empty list)."""
    if not (math.isfinite(lr) and lr > 0):
        raise RuntimeError(f"{op}: lr={lr} is not allowed; lr must be a finite number > 0")
    if not (math.isfinite(q) and q > 0):
        raise RuntimeError(f"{op}: q={q} is not allowed; q must be a finite number > 0")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise RuntimeError(f"{op}: alpha={alpha} is not allowed; alpha must be a finite number >= 0")
    if not math.isfinite(identity):
        raise RuntimeError(f"{op}: identity={identity} is not allowed; identity must be a finite number "
                           "(1 for the hessian update, 0 for curvature)")


def _call(op_name: str, third_name: str, params, grads, third, lr, alpha, q, **extra) -> None:
    a, rows = _split_alpha(alpha)
    lists = _as_list(params, "params"), _as_list(grads, "grads"), _as_list(third, third_name)
    lr, q = _as_float(lr, "lr"), _as_float(q, "q")
    extra = {name: _as_float(value, name) for name, value in extra.items()}
    op = getattr(torch.ops.leadfl, op_name)
    if not any(lists):
        # The dispatcher needs a tensor to pick a kernel; an empty list is a checked no-op.
        _check_hyperparameters(f"leadfl::{op_name}", lr, a, q, **extra)
        return
    op(*lists, lr=lr, alpha=a, alpha_rows=rows, q=q, **extra)


def fused_step_(
    params: TensorOrList, grads: TensorOrList, lookahead_grads: TensorOrList, *, lr: float, alpha: Alpha, q: float,
    identity: float = 1.0,
) -> None:
    """LeadFL ``hessian`` update (SPEC §1.1), in place on ``params``, one pass, one launch.

    ``R = clamp(c - (g~ - g), -q, q)`` and ``W <- W - lr*g - lr*alpha*R`` element-wise, where ``g``
    is the gradient at ``W``, ``g~`` the gradient at the lookahead ``W - lr*g`` on the same batch
    and ``c = identity``: 1 is the ``hessian`` update, 0 the ``curvature`` ablation (§1.5).

    Args:
        params: tensors to update (or one tensor).
        grads: ``g``, one tensor per parameter, same shape, dtype and device.
        lookahead_grads: ``g~``, likewise.
        lr: learning rate ``eta`` (> 0).
        alpha: regularisation strength (>= 0), or a 1-D tensor with one value per row of dim 0 of
            every tensor (one per client when clients are stacked on dim 0; 0 gives plain SGD).
        q: clip threshold (> 0).
        identity: the constant ``c`` (finite; 1 by default).
    """
    _call("fused_step_", "lookahead_grads", params, grads, lookahead_grads, lr, alpha, q, identity=identity)


def paper_step_(
    params: TensorOrList, grads: TensorOrList, deltas: TensorOrList, *, lr: float, alpha: Alpha, q: float
) -> None:
    """LeadFL ``paper`` update (SPEC §1.2), in place on ``params`` and ``deltas``, one launch.

    ``R = clamp(1 - lr*g - D, -q, q)``, ``W' = W - lr*g - lr*alpha*R``, ``D <- W' - W``, ``W <- W'``,
    where ``D`` (``deltas``) is the previous local step's total change (zeros at the start of a
    round's local training). Arguments as in :func:`fused_step_`.
    """
    _call("paper_step_", "deltas", params, grads, deltas, lr, alpha, q)


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill one run of memory (contiguous, channels_last,
    any permutation of a contiguous tensor), as csrc/checks.h's `is_dense`."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((t.stride(d), t.size(d)) for d in range(t.dim()) if t.size(d) != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal strides on every dimension of more than one element (csrc/checks.h's `same_layout`)."""
    if a.is_contiguous() and b.is_contiguous():
        return True
    return all(a.stride(d) == b.stride(d) for d in range(a.dim()) if a.size(d) > 1)


def _check_metadata(op: str, params, first, first_name: str, second, second_name: str, alpha_rows) -> None:
    """The metadata checks of the C++ kernels, for the fake kernels (tracing sees no data)."""
    for name, items in ((first_name, first), (second_name, second)):
        if len(items) != len(params):
            raise RuntimeError(f"{op}: {name} has {len(items)} tensors but params has {len(params)}; "
                               f"pass exactly one {name} tensor per parameter tensor")
    for k, p in enumerate(params):
        if p.device != params[0].device:
            raise RuntimeError(f"{op}: params[{k}] is on {p.device} but params[0] is on {params[0].device}; "
                               "move every tensor to one device")
        if not _is_dense(p):
            raise RuntimeError(f"{op}: params[{k}] (shape {list(p.shape)}, strides {p.stride()}) is not dense: its "
                               "elements overlap or leave gaps in memory; call .contiguous() on the tensor")
        for name, items in ((first_name, first), (second_name, second)):
            o = items[k]
            if o.shape != p.shape:
                raise RuntimeError(f"{op}: {name}[{k}] has shape {list(o.shape)} but params[{k}] has shape "
                                   f"{list(p.shape)}; tensor k of every list must have the same shape")
            if o.dtype != p.dtype:
                raise RuntimeError(f"{op}: {name}[{k}] has dtype {o.dtype} but params[{k}] has dtype {p.dtype}")
            if o.device != p.device:
                raise RuntimeError(f"{op}: {name}[{k}] is on {o.device} but params[{k}] is on {p.device}")
            if not _is_dense(o):
                raise RuntimeError(f"{op}: {name}[{k}] (shape {list(o.shape)}, strides {o.stride()}) is not dense: "
                                   "its elements overlap or leave gaps in memory; call .contiguous() on it")
            if not _same_layout(o, p):
                raise RuntimeError(f"{op}: {name}[{k}] has strides {o.stride()} but params[{k}] has strides "
                                   f"{p.stride()}; tensor k of every list needs the memory layout of params[{k}]: "
                                   f"pass torch.empty_like(params[{k}]).copy_({name}[{k}])")
        if alpha_rows is not None and alpha_rows.device != p.device:
            # Without this, an alpha on "meta" sends CPU params to this (meta) kernel: a silent no-op.
            raise RuntimeError(f"{op}: alpha tensor is on {alpha_rows.device} but params[{k}] is on {p.device}; "
                               f"move it with .to({str(p.device)!r})")
        if alpha_rows is not None and (p.dim() == 0 or p.shape[0] != alpha_rows.shape[0]):
            raise RuntimeError(f"{op}: alpha tensor has {alpha_rows.shape[0]} values but params[{k}] has shape "
                               f"{list(p.shape)}; a per-row alpha needs that many rows in dim 0 of every tensor")
        if alpha_rows is not None and p.shape[0] > 1 and p.numel() > 0 and p.stride(0) != p.numel() // p.shape[0]:
            raise RuntimeError(f"{op}: params[{k}] (shape {list(p.shape)}, strides {p.stride()}) does not keep its "
                               "rows of dim 0 as consecutive blocks of memory, which a per-row alpha needs; make "
                               "dim 0 the outermost dimension (e.g. .contiguous()), or pass a float")


# Fake kernels: the ops only mutate their inputs, so tracing needs no output, only the checks.
@torch.library.register_fake("leadfl::fused_step_")
def _fused_step_fake(params, grads, lookahead_grads, *, lr, alpha, alpha_rows, q, identity=1.0):
    _check_metadata("leadfl::fused_step_", params, grads, "grads", lookahead_grads, "lookahead_grads", alpha_rows)


@torch.library.register_fake("leadfl::paper_step_")
def _paper_step_fake(params, grads, deltas, *, lr, alpha, alpha_rows, q):
    _check_metadata("leadfl::paper_step_", params, grads, "grads", deltas, "deltas", alpha_rows)
