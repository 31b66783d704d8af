"""``rlr(threshold)`` -- the robust learning rate of Ozdayi, Kantarcioglu, Gel (AAAI 2021): per
coordinate, the server's learning rate keeps its sign where at least ``threshold`` more updates
agree on the coordinate's sign than disagree, and is negated elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.errors import ConfigError
from sim.lazy import torch
from sim.server.aggregate import row_mean
from sim.server.base import AggregationContext, Aggregator, ServerSetup
from sim.server.krum import default_f
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor

CHUNK = 1 << 18  # elements per column chunk


@dataclass
class RLRSettings:
    threshold: int | None = setting(
        None, "int", low=0, nullable=True,
        help="theta: the sign agreement |sum_i sign(x_ij)| a coordinate needs to keep its sign; null: server.f + 1",
    )


class RLR(Aggregator):
    """Robust learning rate (Ozdayi et al. 2021), with server learning rate 1:

        s_j = |sum_i sign(x_ij)|        eta_j = +1 if s_j >= threshold else -1
        u_j = eta_j * (1/n) sum_i x_ij

    ``sign(0) = 0``. Every row is kept. With ``f`` attackers assumed, ``threshold = f + 1`` (the
    default) is the smallest value the attackers cannot reach on their own."""

    settings = RLRSettings

    @classmethod
    def check(cls, settings: RLRSettings, setup: ServerSetup) -> dict[str, Any]:
        n = setup.clients_per_round
        threshold = settings.threshold
        if threshold is None:
            f = setup.f
            if f is None:
                f = default_f(n, setup.num_clients, setup.num_malicious)
            elif isinstance(f, bool) or not isinstance(f, int) or f < 0:
                raise ConfigError(
                    f"server.f={f!r} is invalid for rlr: it must be an integer >= 0 or null; "
                    "fix: --set server.f=null (or set server.rlr.threshold)"
                )
            threshold = f + 1
            source = f" (server.rlr.threshold=null resolves to server.f + 1 = {f} + 1)"
        else:
            source = ""
        if threshold > n:
            raise ConfigError(
                f"server.rlr.threshold={threshold}{source} is impossible with clients_per_round={n}: at most {n} "
                f"signs can agree, so every coordinate's learning rate would be negated; "
                f"fix: --set server.rlr.threshold={max(1, min(n, n // 2 + 1))}"
            )
        return {"threshold": threshold}

    def __init__(self, threshold: int = 4):
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ValueError(f"threshold must be an integer >= 0, got {threshold!r}")
        self.threshold = threshold

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n, d = updates.shape
        update = torch.empty(d, dtype=updates.dtype, device=updates.device)
        # Column chunks of CHUNK elements: the sign temporary stays in cache (measured about twice
        # as fast at n = 100 as chunks of 4M elements).
        step = max(1, CHUNK // n)
        for start in range(0, d, step):
            rows = updates[:, start : start + step]
            # Signs summed as float32: whole numbers up to n, exact below 2**24 rows.
            agreement = torch.sign(rows).sum(dim=0, dtype=torch.float32).abs()
            mean = row_mean(rows)
            update[start : start + step] = torch.where(agreement >= self.threshold, mean, -mean)
        return update, list(range(n))
