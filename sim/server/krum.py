"""The Krum family: ``krum``, ``multikrum`` and ``bulyan``, and the Byzantine count ``f`` they assume.

* ``krum(f)`` -- Blanchard et al. 2017: the row whose summed squared distance to its ``n - f - 2``
  nearest other rows is smallest.
* ``multikrum(f, m)`` -- the mean of the ``m`` rows with the lowest Krum scores (``m = n - f`` by
  default).
* ``bulyan(f)`` -- El Mhamdi et al. 2018: Krum picks ``theta = n - 2f`` rows one at a time, then per
  coordinate the ``beta = theta - 2f`` values closest to the median are averaged. Needs
  ``n >= 4f + 3``.

``f`` is the shared setting ``server.f``; ``null`` resolves to ``default_f``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.errors import ConfigError
from sim.lazy import torch
from sim.server.aggregate import (
    check_count,
    krum_neighbours,
    krum_scores,
    lowest,
    mean_closest_to_median,
    pairwise_squared_distances,
    per_column_chunk,
    row_mean,
)
from sim.server.base import AggregationContext, Aggregator, ServerSetup
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


def default_f(clients_per_round: int, num_clients: int, num_malicious: int) -> int:
    """Expected malicious clients among those selected, rounded up: ceil(n * M / N)."""
    return -(-clients_per_round * num_malicious // num_clients)


def byzantine_f(server: Any, clients_per_round: int, num_clients: int, num_malicious: int) -> int:
    """The Byzantine count krum/multikrum/bulyan assume: `server.f`, or else `default_f`."""
    configured = server.get("f") if isinstance(server, dict) else getattr(server, "f", None)
    return default_f(clients_per_round, num_clients, num_malicious) if configured is None else configured


class _AssumesF(Aggregator):
    """A rule that assumes ``f`` Byzantine rows and needs ``n >= factor*f + 3`` of them."""

    factor = 2
    title = "Krum"

    @classmethod
    def resolve_f(cls, setup: ServerSetup) -> int:
        """``server.f`` (None: ``default_f``), refused with the fix when the rule cannot tolerate it.

        It is not lowered to fit a rule; a rule that cannot tolerate it is refused with a message
        saying what to change."""
        name, factor, rule = setup.aggregator, cls.factor, cls.title
        n, num_clients, num_malicious = setup.clients_per_round, setup.num_clients, setup.num_malicious
        configured_f = setup.f
        if configured_f is None:
            f = default_f(n, num_clients, num_malicious)
            shown_f = (
                f"{f} (server.f=null resolves to ceil(clients_per_round*num_malicious/num_clients)"
                f" = ceil({n}*{num_malicious}/{num_clients}))"
            )
        else:
            if isinstance(configured_f, bool) or not isinstance(configured_f, int) or configured_f < 0:
                raise ConfigError(
                    f"server.f={configured_f!r} is invalid for {name}: it must be an integer >= 0 "
                    "or null (expected malicious count among the selected clients)"
                )
            f = configured_f
            shown_f = str(f)
        needed = factor * f + 3
        if n < needed:
            largest_f = (n - 3) // factor
            if configured_f is not None:
                fix = f"raise clients.clients_per_round to at least {needed}"
                if largest_f >= 0:
                    fix = f"set server.f to at most {largest_f} or " + fix + f"; fix: --set server.f={largest_f}"
                else:  # f is already as small as it goes: only more clients per round help
                    fix += f"; fix: --set clients.clients_per_round={needed}"
            else:
                # The default grows with clients_per_round, so only a size where it fits helps.
                fitting = [
                    c for c in range(n + 1, num_clients + 1)
                    if c >= factor * default_f(c, num_clients, num_malicious) + 3
                ]
                if largest_f >= 0:
                    fix = f"set server.f explicitly to at most {largest_f} (fix: --set server.f={largest_f})"
                else:
                    fix = "raise clients.clients_per_round to at least 3 and set server.f explicitly to 0"
                if fitting:
                    fix += f", or raise clients.clients_per_round to at least {fitting[0]}"
            raise ConfigError(
                f"server.f={shown_f} is impossible for {name} with clients_per_round={n}: "
                f"{rule} needs n >= {factor}f+3 ({n} < {needed}); {fix}"
            )
        return f

    @classmethod
    def check(cls, settings: Any, setup: ServerSetup) -> dict[str, Any]:
        return {"f": cls.resolve_f(setup)}


class Krum(_AssumesF):
    """The single row with the lowest Krum score (Blanchard et al. 2017)."""

    def __init__(self, f: int):
        self.f = check_count("f", f, 0)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        scores = krum_scores(pairwise_squared_distances(updates), self.f)
        best = lowest(scores, 1)[0]
        return updates[best].clone(), [best]


@dataclass
class MultiKrumSettings:
    m: int | None = setting(None, "int", low=1, nullable=True, help="how many rows to average; null: n - f")


class MultiKrum(_AssumesF):
    """Unweighted mean of the ``m`` rows with the lowest Krum scores; ``m=None`` means ``n - f``."""

    title = "Multi-Krum"
    settings = MultiKrumSettings

    @classmethod
    def check(cls, settings: MultiKrumSettings, setup: ServerSetup) -> dict[str, Any]:
        f = cls.resolve_f(setup)
        m, n = settings.m, setup.clients_per_round
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n):
            raise ConfigError(
                f"server.multikrum.m={m!r} is invalid for multikrum with clients_per_round={n}: it must be an "
                f"integer in [1, {n}] or null (= n - f = {n - f}); fix: --set server.multikrum.m=null"
            )
        return {"f": f, "m": m}

    def __init__(self, f: int, m: int | None = None):
        self.f = check_count("f", f, 0)
        self.m = None if m is None else check_count("m", m, 1)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        m = n - self.f if self.m is None else self.m
        m = min(n, max(1, m))  # rejected rows may leave fewer than m
        chosen = lowest(krum_scores(pairwise_squared_distances(updates), self.f), m)
        return row_mean(updates[chosen]), chosen


class Bulyan(_AssumesF):
    """Bulyan over Krum (El Mhamdi et al. 2018).

    Each Krum pick runs on the rows not yet picked, with the same ``f``. The last picks see fewer
    than ``2f + 3`` rows, so the neighbour count is held at one or more; equal scores go to the
    lower row index. ``kept`` is the selection set.

    ``build_aggregator`` refuses ``n < 4f + 3``. If rejected rows shrink ``n`` below that in a
    round, that round uses the largest ``f`` the remaining rows allow.
    """

    factor = 4
    title = "Bulyan"

    def __init__(self, f: int):
        self.f = check_count("f", f, 0)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        f = min(self.f, max(0, (n - 3) // 4))
        selection_size = n - 2 * f  # theta
        closest_count = selection_size - 2 * f  # beta

        # Krum picks one row at a time from the rows not yet picked. Each row's distances are
        # sorted once; a pick's score is the sum of the first `neighbours` distances to rows
        # still in play, taken in that order -- the same values, summed in the same order, as a
        # top-k over the remaining rows.
        distances = pairwise_squared_distances(updates)
        distances.fill_diagonal_(math.inf)
        nearest, order = distances.sort(dim=1)
        in_play = torch.ones(n, dtype=torch.bool, device=updates.device)
        selected: list[int] = []
        for _ in range(selection_size):
            rows = in_play.nonzero().flatten()
            remaining = rows.shape[0]
            if remaining == 1:
                winner = int(rows[0])
            else:
                neighbours = krum_neighbours(remaining, f)
                others = in_play[order[rows]]  # [remaining, n]: in sorted order, still in play?
                taken = others & (others.cumsum(dim=1) <= neighbours)
                scores = nearest[rows][taken].view(remaining, neighbours).sum(dim=1)
                winner = int(rows[lowest(scores, 1)[0]])
            selected.append(winner)
            in_play[winner] = False

        index = torch.tensor(selected, device=updates.device)
        update = per_column_chunk(
            updates, lambda block: mean_closest_to_median(block.index_select(0, index), closest_count)
        )
        return update, selected
