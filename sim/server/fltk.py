"""Compatibility rules ``fltk_multikrum`` and ``fltk_bulyan``: what the LeadFL reference code runs
under the names ``multiKrum`` and ``bulyan`` (constants fixed for ten clients; the second is not
Bulyan). Use them only to compare with numbers from that code.

The reference code aggregated absolute weights; these rules see updates. Distances between
updates equal distances between the local models (the global part cancels), and a mean of updates
is the mean of the local models minus the global, so the compatibility rules give the same result
on the trainable parameters.

Its weights were full state dicts, so each BatchNorm layer's ``num_batches_tracked`` counter (the
global model's count plus the forward passes the client ran) entered the distances too. With
``counters: true`` a rule declares that it needs those counters (``[n, L]``, one column per
BatchNorm layer, the forward passes of the round; the global model's count is common to every row
and cancels in the differences) and adds ``sum_l (counters[i, l] - counters[j, l])^2`` to the
squared distance of rows ``i`` and ``j``. The counters never enter the mean: this simulator's
models keep no BatchNorm buffers (docs/algorithms.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.server.aggregate import check_count, distances_with_counters, lowest, row_mean, sum_of_nearest
from sim.server.base import AggregationContext, Aggregator
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class FltkSettings:
    counters: bool = setting(False, "bool", help="add the BatchNorm forward-pass counters to the distances, "
                             "as the LeadFL code's full state dicts did")


class FltkMultiKrum(Aggregator):
    """Compatibility rule: what the LeadFL reference code runs as ``multiKrum``.

    Score = sum of the 8 smallest squared distances counting the zero self-distance, i.e. the 7
    nearest other rows (standard Multi-Krum with n = 10 would use n - f - 2); the unweighted mean
    of the 5 lowest scores. The constants ignore ``n`` and ``f``; with fewer rows they are capped.
    Takes the BatchNorm ``counters`` (module docstring).
    """

    settings = FltkSettings

    def __init__(self, nearest: int = 7, m: int = 5, counters: bool = False):
        self.needs = frozenset({"counters"}) if counters else frozenset()
        self.nearest = check_count("nearest", nearest, 1)
        self.m = check_count("m", m, 1)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        scores = sum_of_nearest(distances_with_counters(updates, context.counters), min(self.nearest, max(1, n - 1)))
        chosen = lowest(scores, self.m)
        return row_mean(updates[chosen]), chosen


class FltkBulyan(Aggregator):
    """Compatibility rule: what the LeadFL reference code runs as ``bulyan`` (it is not Bulyan).

    Score = sum of the 7 smallest squared distances counting the zero self-distance (6 nearest
    others); rows ranked by score; the unweighted mean of ranks 2, 3 and 4 -- the best-scored row
    is skipped, and there is no coordinate-wise step. With a single row, that row is returned.
    Takes the BatchNorm ``counters`` (module docstring).
    """

    settings = FltkSettings

    def __init__(self, nearest: int = 6, first_rank: int = 1, last_rank: int = 4, counters: bool = False):
        self.needs = frozenset({"counters"}) if counters else frozenset()
        self.nearest = check_count("nearest", nearest, 1)
        self.first_rank = check_count("first_rank", first_rank, 0)
        self.last_rank = check_count("last_rank", last_rank, self.first_rank + 1)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        scores = sum_of_nearest(distances_with_counters(updates, context.counters), min(self.nearest, max(1, n - 1)))
        ranked = lowest(scores, n)
        chosen = ranked[self.first_rank : self.last_rank] or ranked[:1]
        return row_mean(updates[chosen]), chosen
