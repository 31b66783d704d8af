"""Plain-PyTorch definitions of the LeadFL updates: what the fused ops and the optimizer are tested against.

Each function mirrors SPEC §1 line by line, one tensor at a time, with no fusion.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .ops import Alpha, TensorOrList, _as_list


def _lr_alpha(lr: float, alpha: Alpha, like: torch.Tensor):
    """``lr * alpha`` for one tensor: a float, or a per-row column broadcast over dims 1.."""
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 1:
        column = (lr * alpha.to(torch.float64)).to(like.dtype)
        return column.reshape(-1, *([1] * (like.dim() - 1)))
    return lr * float(alpha)


@torch.no_grad()
def fused_step_(params: TensorOrList, grads: TensorOrList, lookahead_grads: TensorOrList, *, lr: float,
                alpha: Alpha, q: float, identity: float = 1.0) -> None:
    """SPEC §1.1 (``hessian``): ``W <- W - lr*g - lr*alpha*clamp(c - (g~ - g), -q, q)``, ``c = identity``
    (1: ``hessian``; 0: the ``curvature`` ablation, §1.5)."""
    for w, g, g_look in zip(_as_list(params, "params"), _as_list(grads, "grads"),
                            _as_list(lookahead_grads, "lookahead_grads"), strict=True):
        hessian_times_lr = g_look - g                     # lr * H, with H = (g~ - g) / lr
        r = torch.clamp(identity - hessian_times_lr, -q, q)
        w.copy_(w - lr * g - _lr_alpha(lr, alpha, w) * r)


@torch.no_grad()
def paper_step_(params: TensorOrList, grads: TensorOrList, deltas: TensorOrList, *, lr: float, alpha: Alpha,
                q: float) -> None:
    """SPEC §1.2 (``paper``): ``W~ = W - lr*g``, ``R = clamp(1 - lr*g - D)``, ``W' = W~ - lr*alpha*R``, ``D <- W' - W``."""
    for w, g, d in zip(_as_list(params, "params"), _as_list(grads, "grads"), _as_list(deltas, "deltas"),
                       strict=True):
        step = lr * g
        w_lookahead = w - step
        r = torch.clamp(1 - step - d, -q, q)
        w_new = w_lookahead - _lr_alpha(lr, alpha, w) * r
        d.copy_(w_new - w)
        w.copy_(w_new)


def _sgd_momentum_step_(w: torch.Tensor, grad: torch.Tensor, buffers: list, k: int, lr: float,
                        momentum: float) -> None:
    """torch.optim.SGD's update (no dampening, no weight decay, no nesterov) for tensor k."""
    if momentum == 0:
        w.sub_(lr * grad)
        return
    if buffers[k] is None:
        buffers[k] = grad.clone()
    else:
        buffers[k].mul_(momentum).add_(grad)
    w.sub_(lr * buffers[k])


@torch.no_grad()
def original_step_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], *, regularized: Sequence[bool],
                   momentum_buffers: list, prev_params: list, prev_grads: list, lr: float, alpha: float, q: float,
                   momentum: float) -> None:
    """SPEC §1.3 (``original``): one minibatch of the authors' LeadFL client step.

    ``grads`` is the task gradient at the current ``params``. ``momentum_buffers``, ``prev_params``
    (P) and ``prev_grads`` (G) are per-tensor lists updated in place; ``None`` entries in
    ``prev_params`` mean the first batch of a local epoch (task step only).
    """
    params, grads = list(params), list(grads)
    for k, (w, g) in enumerate(zip(params, grads, strict=True)):
        _sgd_momentum_step_(w, g, momentum_buffers, k, lr, momentum)         # task step -> W'
    first_batch = any(prev_params[k] is None for k in range(len(params)) if regularized[k])
    last_grads = list(grads)
    if not first_batch:
        for k, (w, g) in enumerate(zip(params, grads)):
            h = g.clone()                                                    # task gradient is not cleared
            if regularized[k]:
                u = w - prev_params[k] - prev_grads[k] - lr                  # W' - P - G - lr*1
                norm = torch.linalg.vector_norm(u)
                if norm > 0:
                    h += alpha * u / norm                                    # gradient of alpha*||u||_2
            h.clamp_(-q, q)
            _sgd_momentum_step_(w, h, momentum_buffers, k, lr, momentum)     # second step
            last_grads[k] = h
    for k, w in enumerate(params):
        if regularized[k]:
            prev_params[k] = w.clone()
            prev_grads[k] = last_grads[k].clone()
