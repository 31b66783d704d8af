"""Python face of the fused LeadFL ops (``torch.ops.leadfl``)."""
from __future__ import annotations

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


def fused_step_(
    params: TensorOrList, grads: TensorOrList, lookahead_grads: TensorOrList, *, lr: float, alpha: Alpha, q: float
) -> None:
    """LeadFL ``hessian`` update (SPEC §1.1), in place on ``params``, one pass, one launch.

    ``R = clamp(1 - (g~ - g), -q, q)`` and ``W <- W - lr*g - lr*alpha*R`` element-wise, where ``g``
    is the gradient at ``W`` and ``g~`` the gradient at the lookahead ``W - lr*g`` on the same batch.

    Args:
        params: tensors to update (or one tensor).
        grads: ``g``, one tensor per parameter, same shape, dtype and device.
        lookahead_grads: ``g~``, likewise.
        lr: learning rate ``eta`` (> 0).
        alpha: regularisation strength (>= 0), or a 1-D tensor with one value per row of dim 0 of
            every tensor (one per client when clients are stacked on dim 0; 0 gives plain SGD).
        q: clip threshold (> 0).
    """
    a, rows = _split_alpha(alpha)
    torch.ops.leadfl.fused_step_(
        _as_list(params, "params"),
        _as_list(grads, "grads"),
        _as_list(lookahead_grads, "lookahead_grads"),
        lr=_as_float(lr, "lr"),
        alpha=a,
        alpha_rows=rows,
        q=_as_float(q, "q"),
    )


def paper_step_(
    params: TensorOrList, grads: TensorOrList, deltas: TensorOrList, *, lr: float, alpha: Alpha, q: float
) -> None:
    """LeadFL ``paper`` update (SPEC §1.2), in place on ``params`` and ``deltas``, one launch.

    ``R = clamp(1 - lr*g - D, -q, q)``, ``W' = W - lr*g - lr*alpha*R``, ``D <- W' - W``, ``W <- W'``,
    where ``D`` (``deltas``) is the previous local step's total change (zeros at the start of a
    round's local training). Arguments as in :func:`fused_step_`.
    """
    a, rows = _split_alpha(alpha)
    torch.ops.leadfl.paper_step_(
        _as_list(params, "params"),
        _as_list(grads, "grads"),
        _as_list(deltas, "deltas"),
        lr=_as_float(lr, "lr"),
        alpha=a,
        alpha_rows=rows,
        q=_as_float(q, "q"),
    )


# Fake kernels: the ops only mutate their inputs, so tracing needs no output metadata.
@torch.library.register_fake("leadfl::fused_step_")
def _fused_step_fake(params, grads, lookahead_grads, *, lr, alpha, alpha_rows, q):
    return None


@torch.library.register_fake("leadfl::paper_step_")
def _paper_step_fake(params, grads, deltas, *, lr, alpha, alpha_rows, q):
    return None
