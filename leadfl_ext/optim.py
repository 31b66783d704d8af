"""``LeadFL``: a torch.optim optimizer for a LeadFL client's local training."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from . import reference
from .ops import fused_step_, paper_step_

VARIANTS = ("hessian", "paper", "original")


def _check_number(name: str, value, *, low: float, inclusive: bool, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} is not a number; {hint}")
    value = float(value)
    ok = value >= low if inclusive else value > low
    if not ok or value != value or value == float("inf"):
        bound = f">= {low}" if inclusive else f"> {low}"
        raise ValueError(f"{name}={value!r} is not allowed; {name} must be a finite number {bound} ({hint})")
    return value


def leadfl_param_groups(module: torch.nn.Module, **group_options) -> list[dict]:
    """Parameter groups for :class:`LeadFL` from a module's names.

    Tensors whose name contains ``weight`` (conv/linear weights and BatchNorm scales) form the
    regularised group, all other trainable tensors (biases, BatchNorm shifts) the unregularised
    one, as in the authors' code. ``group_options`` (e.g. ``lr``) go into both groups.
    """
    regularized, plain = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (regularized if "weight" in name else plain).append(p)
    groups = [dict(params=regularized, regularized=True, **group_options)]
    if plain:
        groups.append(dict(params=plain, regularized=False, **group_options))
    return groups


class LeadFL(torch.optim.Optimizer):
    """SGD with the LeadFL client regulariser (SPEC §1).

    Variants:
        ``hessian`` (default): evaluates the closure at ``W`` and at the lookahead ``W - lr*g``
            on the same batch, then one fused update (:func:`leadfl_ext.fused_step_`).
        ``paper``: one gradient per step; keeps the previous step's change ``D`` per tensor and
            applies :func:`leadfl_ext.paper_step_`.
        ``original``: the authors' code exactly (SPEC §1.3): task step, regulariser gradient
            accumulated onto the task gradient, value clip, second step, momentum shared by
            both. Call :meth:`reset_local_epoch` at the start of every local epoch.

    Momentum (heavy ball, like ``torch.optim.SGD``) acts on the task gradient only: the
    parameters first move by ``-lr*mu*v_prev``, the LeadFL update then uses the plain gradient
    ``g``, and ``v = mu*v_prev + g``; for ``paper``, ``D`` still holds the step's total change.
    A group with
    ``regularized=False`` is plain SGD for ``hessian``/``paper`` and is left out of the norm
    term for ``original`` (see :func:`leadfl_param_groups`).
    """

    def __init__(self, params: Iterable, lr: float, alpha: float = 0.4, q: float = 0.2, variant: str = "hessian",
                 momentum: float = 0.0):
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not one of {', '.join(VARIANTS)}; pick one of them")
        lr = _check_number("lr", lr, low=0.0, inclusive=False, hint="the local learning rate")
        alpha = _check_number("alpha", alpha, low=0.0, inclusive=True, hint="0 gives plain SGD")
        q = _check_number("q", q, low=0.0, inclusive=False, hint="the clip threshold, 0.2 by default")
        momentum = _check_number("momentum", momentum, low=0.0, inclusive=True, hint="0 turns momentum off")
        if momentum >= 1:
            raise ValueError(f"momentum={momentum!r} is not allowed; momentum must be in [0, 1)")
        defaults = dict(lr=lr, alpha=alpha, q=q, momentum=momentum, regularized=True)
        super().__init__(params, defaults)
        self.variant = variant
        for group in self.param_groups:
            for key in ("lr", "alpha", "q", "momentum"):
                bounds = {"lr": (0.0, False), "alpha": (0.0, True), "q": (0.0, False), "momentum": (0.0, True)}[key]
                _check_number(f"param group {key}", group[key], low=bounds[0], inclusive=bounds[1],
                              hint="set it in the group or as the optimizer default")

    # -- helpers ---------------------------------------------------------------------------
    def _with_grads(self, group: dict) -> list[torch.Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    def _momentum_buffers(self, params: list[torch.Tensor]) -> list:
        return [self.state[p].get("momentum_buffer") for p in params]

    def _store_momentum(self, params: list[torch.Tensor], buffers: list) -> None:
        for p, buf in zip(params, buffers):
            if buf is not None:
                self.state[p]["momentum_buffer"] = buf

    @staticmethod
    def _call_closure(closure: Callable[[], torch.Tensor]):
        with torch.enable_grad():
            return closure()

    def reset_local_epoch(self) -> None:
        """Clear the ``original`` variant's P (previous weights) and G (previous gradients)."""
        for state in self.state.values():
            state.pop("prev_param", None)
            state.pop("prev_grad", None)

    def reset_deltas(self) -> None:
        """Zero the ``paper`` variant's D (start of a round's local training)."""
        for state in self.state.values():
            if "delta" in state:
                state["delta"].zero_()

    # -- step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One local step. ``closure`` zeroes the gradients, computes the loss on the current
        batch, calls ``backward()`` and returns the loss; ``hessian`` needs it (two evaluations
        per step), the other variants use the gradients already in ``.grad`` when it is None."""
        if self.variant == "hessian":
            return self._step_hessian(closure)
        loss = self._call_closure(closure) if closure is not None else None
        if self.variant == "paper":
            self._step_paper()
        else:
            self._step_original()
        return loss

    def _step_hessian(self, closure):
        if closure is None:
            raise ValueError("variant 'hessian' evaluates the loss twice per step (at W and at the lookahead "
                             "W - lr*g, on the same batch); pass step(closure) with a closure that zeroes the "
                             "gradients, computes the loss and calls backward()")
        loss = self._call_closure(closure)
        groups = []
        for group in self.param_groups:
            params = self._with_grads(group)
            if not params:
                continue
            grads = [p.grad.clone() for p in params]
            originals = [p.clone() for p in params]
            torch._foreach_add_(params, grads, alpha=-group["lr"])          # lookahead W - lr*g
            groups.append((group, params, grads, originals))
        self._call_closure(closure)                                          # g~ at the lookahead
        for group, params, grads, originals in groups:
            lookahead = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            torch._foreach_copy_(params, originals)
            mu = group["momentum"]
            if mu > 0:
                buffers = self._momentum_buffers(params)
                started = [(p, b) for p, b in zip(params, buffers) if b is not None]
                if started:  # heavy ball: W - lr*(mu*v + g) - lr*alpha*R
                    torch._foreach_add_([p for p, _ in started], [b for _, b in started], alpha=-group["lr"] * mu)
                new_buffers = [g.clone() if b is None else b.mul_(mu).add_(g) for g, b in zip(grads, buffers)]
                self._store_momentum(params, new_buffers)
            alpha = group["alpha"] if group["regularized"] else 0.0
            fused_step_(params, grads, lookahead, lr=group["lr"], alpha=alpha, q=group["q"])
        return loss

    def _step_paper(self):
        for group in self.param_groups:
            params = self._with_grads(group)
            if not params:
                continue
            grads = [p.grad for p in params]
            deltas = []
            for p in params:
                state = self.state[p]
                if "delta" not in state:
                    state["delta"] = torch.zeros_like(p)
                deltas.append(state["delta"])
            mu, lr = group["momentum"], group["lr"]
            started = []
            if mu > 0:
                buffers = self._momentum_buffers(params)
                started = [(p, d, b) for p, d, b in zip(params, deltas, buffers) if b is not None]
                for b in (b for _, _, b in started):
                    b.mul_(mu)
                if started:  # heavy ball on the task gradient: W -= lr*mu*v_prev first
                    torch._foreach_add_([p for p, _, _ in started], [b for _, _, b in started], alpha=-lr)
            alpha = group["alpha"] if group["regularized"] else 0.0
            paper_step_(params, grads, deltas, lr=lr, alpha=alpha, q=group["q"])
            if started:  # D is the step's total change, the momentum shift included
                torch._foreach_add_([d for _, d, _ in started], [b for _, _, b in started], alpha=-lr)
            if mu > 0:
                self._store_momentum(params, [g.clone() if b is None else b.add_(g) for g, b in zip(grads, buffers)])

    def _step_original(self):
        # All groups take the task step before any regulariser step, as the authors' two
        # optimizer.step() calls do; the groups are therefore handled together.
        params, grads, regularized, lrs, alphas, qs, mus = [], [], [], [], [], [], []
        for group in self.param_groups:
            for p in self._with_grads(group):
                params.append(p)
                grads.append(p.grad.clone())
                regularized.append(bool(group["regularized"]))
                lrs.append(group["lr"]), alphas.append(group["alpha"]), qs.append(group["q"])
                mus.append(group["momentum"])
        if not params:
            return
        if len(set(lrs)) > 1 or len(set(alphas)) > 1 or len(set(qs)) > 1 or len(set(mus)) > 1:
            raise ValueError("variant 'original' needs one lr, alpha, q and momentum for all parameter groups "
                             "(the authors' step shares them); set them as optimizer defaults")
        buffers = self._momentum_buffers(params)
        prev_params = [self.state[p].get("prev_param") for p in params]
        prev_grads = [self.state[p].get("prev_grad") for p in params]
        reference.original_step_(params, grads, regularized=regularized, momentum_buffers=buffers,
                                 prev_params=prev_params, prev_grads=prev_grads, lr=lrs[0], alpha=alphas[0],
                                 q=qs[0], momentum=mus[0])
        self._store_momentum(params, buffers)
        for p, prev_p, prev_g in zip(params, prev_params, prev_grads):
            if prev_p is not None:
                self.state[p]["prev_param"] = prev_p
                self.state[p]["prev_grad"] = prev_g
