"""``sparsefed(k, clip)`` -- Panda et al. 2022: rows L2-clipped to ``clip``, averaged, added to a
server error accumulator; the top-k coordinates by magnitude are released and the rest stay in
the accumulator for later rounds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.lazy import torch
from sim.server.aggregate import row_mean
from sim.errors import ConfigError
from sim.server.base import AggregationContext, Aggregator, ServerSetup
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


def check_k(k: Any) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"k must be a fraction in (0, 1] or an integer count > 1, got {k!r}")
    if k > 1 and not float(k).is_integer():
        raise ValueError(
            f"k={k!r} is above 1, so it is read as a count of coordinates, which must be whole; "
            "use a fraction in (0, 1] or an integer count"
        )
    return float(k)


@dataclass
class SparseFedSettings:
    k: float = setting(0.1, "float", low=0, low_open=True,
                       help="coordinates released per round: a fraction in (0, 1] or a whole count > 1")
    clip: float = setting(1.0, "float", low=0, low_open=True, help="the client update L2 bound")


class SparseFed(Aggregator):
    """Client L2 clipping + server global top-k with error feedback (Panda et al. 2022).

    ``k`` is a fraction of the coordinates in (0, 1] or a count > 1 (a count above ``d`` keeps all).
    ``clip=None`` disables clipping. The error accumulator is the rule's state: save it with
    ``state_dict()`` and restore it with ``load_state_dict()`` when a run resumes. A round whose
    rows are all non-finite returns zeros and leaves the accumulator untouched.
    """

    settings = SparseFedSettings

    @classmethod
    def check(cls, settings: SparseFedSettings, setup: ServerSetup) -> dict[str, Any]:
        try:
            check_k(settings.k)
        except ValueError:
            raise ConfigError(
                f"server.sparsefed.k={settings.k!r} is invalid for sparsefed: it must be a fraction of the "
                "coordinates in (0, 1] or a whole count > 1; fix: --set server.sparsefed.k=0.1"
            ) from None
        return {"k": settings.k, "clip": settings.clip}

    def __init__(self, k: float = 0.1, clip: float | None = 1.0):
        self.k = check_k(k)
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
            raise ValueError(f"clip must be a number > 0 or None, got {clip!r}")
        self.clip = None if clip is None else float(clip)
        self.error: Tensor | None = None

    def keep_count(self, d: int) -> int:
        if self.k <= 1:
            return max(1, int(self.k * d))
        return min(d, int(self.k))

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        d = updates.shape[1]
        if self.clip is not None:
            norms = updates.norm(dim=1, keepdim=True)
            # clip / 0 = inf, clamped to 1: a zero row stays zero.
            updates = updates * (self.clip / norms).clamp(max=1.0)
        if self.error is None:
            self.error = updates.new_zeros(d)
        elif self.error.shape != (d,):
            raise ValueError(
                f"the SparseFed error accumulator has {self.error.shape[0]} coordinates but the "
                f"updates have {d}; load a state saved for this model or start a fresh aggregator"
            )
        error = self.error.to(device=updates.device, dtype=updates.dtype)
        accumulated = error + row_mean(updates)
        if not bool(torch.isfinite(accumulated).all()):
            # Error and mean both finite, their sum beyond the dtype's range: it saturates at the
            # largest finite value, so no Inf enters the update or the accumulator.
            largest = torch.finfo(updates.dtype).max
            accumulated = (error.double() + row_mean(updates).double()).clamp(-largest, largest).to(updates.dtype)
        released = torch.topk(accumulated.abs(), self.keep_count(d)).indices
        update = torch.zeros_like(accumulated)
        update[released] = accumulated[released]
        accumulated[released] = 0
        self.error = accumulated
        return update, list(range(updates.shape[0]))

    def state_dict(self) -> dict[str, Any]:
        return {"error": None if self.error is None else self.error.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        error = state["error"]
        self.error = None if error is None else error.detach().clone()
