"""Server aggregation rules on stacked client updates.

Every rule receives ``updates[n, d]``: one row per selected client, each row ``local - global``
over the model's trainable floats. It returns an :class:`Aggregation` whose ``update`` the round
loop adds to the global parameters.

Rows holding NaN or Inf are set aside before any rule runs: they are listed in
``rejected_nonfinite`` and never enter a mean, a distance or a sort. The rule then sees the
remaining ``n`` rows. When every row is rejected the update is all zeros.

Rules (``AGGREGATORS`` maps the config name ``server.aggregator`` to the class):

* ``fedavg`` -- the mean, optionally weighted per row.
* ``krum(f)`` -- Blanchard et al. 2017: the row whose summed squared distance to its ``n - f - 2``
  nearest other rows is smallest.
* ``multikrum(f, m)`` -- the mean of the ``m`` rows with the lowest Krum scores (``m = n - f`` by
  default).
* ``bulyan(f)`` -- El Mhamdi et al. 2018: Krum picks ``theta = n - 2f`` rows one at a time, then per
  coordinate the ``beta = theta - 2f`` values closest to the median are averaged. Needs
  ``n >= 4f + 3``.
* ``median`` -- coordinate-wise median (the mean of the two middle values when ``n`` is even).
* ``trimmed_mean(beta)`` -- coordinate-wise mean after dropping ``floor(beta * n)`` values from each
  end.
* ``sparsefed(k, clip)`` -- Panda et al. 2022: rows L2-clipped to ``clip``, averaged, added to a
  server error accumulator; the top-k coordinates by magnitude are released and the rest stay in
  the accumulator for later rounds.
* ``robust_dpfl`` -- Qi et al. 2024 (Robust-DPFL): each row's detection score is the absolute
  mean of its coordinates; the scores are split into two clusters by exact 1-D 2-means and the
  rows of the lower-score cluster are averaged.
* ``fltk_multikrum`` and ``fltk_bulyan`` -- compatibility rules that reproduce what the LeadFL
  reference code runs under the names ``multiKrum`` and ``bulyan`` (constants fixed for ten
  clients; the second is not Bulyan). Use them only to compare with numbers from that code.

The reference code aggregated absolute weights; these rules see updates. Distances between
updates equal distances between the local models (the global part cancels), and a mean of updates
is the mean of the local models minus the global, so the compatibility rules give the same result
on the trainable parameters.

Its weights were full state dicts, so each BatchNorm layer's ``num_batches_tracked`` counter (the
global model's count plus the forward passes the client ran) entered the distances too. The
compatibility rules take those counters as ``counters[n, L]`` (one column per BatchNorm layer,
the forward passes of the round; the global model's count is common to every row and cancels in
the differences) and add ``sum_l (counters[i, l] - counters[j, l])^2`` to the squared distance
of rows ``i`` and ``j``. The counters never enter the mean: this simulator's models keep no
BatchNorm buffers (``server.fltk_counters``, docs/algorithms.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sim.errors import ConfigError

__all__ = [
    "AGGREGATORS",
    "Aggregation",
    "Aggregator",
    "Bulyan",
    "FedAvg",
    "FltkBulyan",
    "FltkMultiKrum",
    "Krum",
    "Median",
    "MultiKrum",
    "SparseFed",
    "RobustDPFL",
    "TrimmedMean",
    "build_aggregator",
    "default_f",
]


@dataclass
class Aggregation:
    update: Tensor  # [d]
    kept: list[int]  # row indices of the input that contributed
    rejected_nonfinite: list[int]  # row indices dropped for holding NaN or Inf


def _split_finite(updates: Tensor) -> tuple[Tensor, list[int], list[int]]:
    if updates.dim() != 2:
        raise ValueError(
            f"updates must be a 2-D tensor [clients, parameters], got shape {tuple(updates.shape)}; "
            "stack the flattened client updates with torch.stack"
        )
    if not updates.is_floating_point():
        raise ValueError(f"updates must be floating point, got dtype {updates.dtype}")
    # A row sum is non-finite whenever the row holds NaN or Inf (and, rarely, when a finite row's
    # sum overflows); only then is the row checked element by element. One pass instead of two.
    finite = torch.isfinite(updates.sum(dim=1))
    if not bool(finite.all()):
        finite = torch.isfinite(updates).all(dim=1)
    finite_rows = finite.nonzero().flatten().tolist()
    rejected_rows = (~finite).nonzero().flatten().tolist()
    finite_updates = updates if not rejected_rows else updates[finite]
    return finite_updates, finite_rows, rejected_rows


# float64 elements per column chunk of the distance and mean loops (4 MB, reused): big enough for
# a fast matrix product, small enough to stay in cache; no [n, d] float64 copy is ever made.
_CHUNK_ELEMENTS = 1 << 19


# Elements per column chunk of the coordinate-wise rules (median, trimmed mean, Bulyan's last
# step): each chunk's copies (partition, distances, masks) stay small whatever d is.
_COORDINATE_CHUNK_ELEMENTS = 1 << 22


def _column_chunks(n: int, d: int) -> tuple[range, int]:
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    return range(0, d, step), step


def _per_column_chunk(rows: Tensor, rule) -> Tensor:
    """A coordinate-wise ``rule`` (a function of an [n, c] block returning [c]) over the columns
    of ``rows``, a chunk at a time."""
    n, d = rows.shape
    step = max(1, _COORDINATE_CHUNK_ELEMENTS // max(n, 1))
    if step >= d:
        return rule(rows)
    return torch.cat([rule(rows[:, start : start + step]) for start in range(0, d, step)])


def _pairwise_squared_distances(rows: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows, float64 [n, n].

    |a - b|^2 = |a|^2 + |b|^2 - 2 a.b through one float64 matrix product per column chunk, on
    columns centred by their mean (distances do not change under a shift; centring keeps the
    norms small against the distances, so the subtraction loses few digits). Products of float32
    values are exact in float64, so what rounding remains is float64's, far below float32's
    rounding of the updates themselves. Rows that are exactly equal share one row and column of
    the matrix (their distance is exactly 0 and their Krum scores tie exactly, so the lowest
    index wins, as with exact differences).
    """
    n, d = rows.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=rows.device)
    shift = rows.mean(dim=0)  # any shift will do, the same for every row
    starts, step = _column_chunks(n, d)
    if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
        # numpy's BLAS: on some CPUs (measured on an AMD EPYC) twice as fast as torch's for this.
        values, shift_values, gram_values = rows.detach().numpy(), shift.detach().numpy(), gram.numpy()
        buffer = np.empty((n, min(step, d)), dtype=np.float64)
        for start in starts:
            width = min(step, d - start)
            chunk = buffer[:, :width]
            np.subtract(
                values[:, start : start + width], shift_values[start : start + width], out=chunk, dtype=np.float64
            )
            gram_values += chunk @ chunk.T
    else:
        buffer = torch.empty(n, min(step, d), dtype=torch.float64, device=rows.device)
        for start in starts:
            width = min(step, d - start)
            chunk = buffer[:, :width].copy_(rows[:, start : start + width])
            chunk -= shift[start : start + width]
            gram.addmm_(chunk, chunk.T)
    norms = gram.diagonal().clone()
    distances = norms[:, None] + norms[None, :] - 2 * gram
    distances = ((distances + distances.T) / 2).clamp_(min=0)
    distances.fill_diagonal_(0)
    # Candidates for equal rows: computed distance within rounding of 0. Each is compared exactly
    # with the lowest earlier row of its group.
    tolerance = 1e-9 * (norms[:, None] + norms[None, :])
    close = torch.triu(distances <= tolerance, diagonal=1).nonzero().tolist()
    if not close:
        return distances
    group = list(range(n))
    for i, j in close:  # row-major: i ascending, then j
        if group[j] == j and group[i] == i and torch.equal(rows[i], rows[j]):
            group[j] = i
    if group == list(range(n)):
        return distances
    index = torch.tensor(group, device=rows.device)
    return distances[index][:, index]


def _krum_neighbours(n: int, f: int) -> int:
    # n - f - 2 when n >= 2f + 3. Bulyan's last picks, and rounds with rejected rows, see fewer
    # rows; the count is then kept in [1, n - 1] so a rule still returns a row mid-run.
    return min(n - 1, max(1, n - f - 2))


def _sum_of_nearest(squared_distances: Tensor, neighbours: int) -> Tensor:
    """Per row, the sum of its ``neighbours`` smallest squared distances to the other rows."""
    n = squared_distances.shape[0]
    if n == 1:
        return squared_distances.new_zeros(1)
    self_mask = torch.eye(n, dtype=torch.bool, device=squared_distances.device)
    to_others = squared_distances.masked_fill(self_mask, math.inf)
    return torch.topk(to_others, neighbours, dim=1, largest=False).values.sum(dim=1)


def _krum_scores(squared_distances: Tensor, f: int) -> Tensor:
    n = squared_distances.shape[0]
    return _sum_of_nearest(squared_distances, _krum_neighbours(n, f))


def _lowest(scores: Tensor, count: int) -> list[int]:
    # A stable sort breaks ties by row order, so equal scores give the same pick on every run.
    return torch.sort(scores, stable=True).indices[:count].tolist()


def _order_statistics(rows: Tensor, ranks: list[int]) -> Tensor:
    """Per coordinate, the values of the given 0-based ranks in ascending order: [len(ranks), d].

    On the CPU numpy's introselect (np.partition) finds them without sorting whole columns; on
    other devices the columns are sorted. Both give the exact order statistics."""
    if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
        values = rows.detach().numpy()
        partitioned = np.partition(values, ranks, axis=0)
        return torch.from_numpy(partitioned[ranks])
    return rows.sort(dim=0).values[ranks]


def _midpoint(low: Tensor, high: Tensor) -> Tensor:
    middle = (low + high) / 2
    overflow = ~torch.isfinite(middle)
    if bool(overflow.any()):  # low + high beyond the dtype's range: halve first
        middle = torch.where(overflow, low / 2 + high / 2, middle)
    return middle


def _coordinate_median(rows: Tensor) -> Tensor:
    n = rows.shape[0]
    if n % 2 == 1:
        return _order_statistics(rows, [n // 2])[0]
    low, high = _order_statistics(rows, [n // 2 - 1, n // 2])
    return _midpoint(low, high)


def _mean(rows: Tensor, divisor: int | None = None) -> Tensor:
    """Sum of the rows (dim 0) over ``divisor`` (default: their number), i.e. their mean.

    The sum runs in the rows' dtype; if it overflows (the rows are finite, so only a sum beyond
    the dtype's range gives Inf), it is taken again in float64, chunk by chunk, each row divided
    by the divisor first, so a mean of huge finite rows stays finite."""
    n, d = rows.shape
    mean = rows.mean(dim=0) if divisor is None else rows.sum(dim=0) / divisor
    if bool(torch.isfinite(mean).all()):
        return mean
    divisor = n if divisor is None else divisor
    starts, step = _column_chunks(n, d)
    for start in starts:
        chunk = rows[:, start : start + step].to(torch.float64)
        mean[start : start + step] = (chunk / divisor).sum(dim=0).to(rows.dtype)
    return mean


def _mean_closest_to_median(rows: Tensor, count: int) -> Tensor:
    """Per coordinate, the mean of the ``count`` values closest to the coordinate's median.

    Among values equally far from the median the lower row index is taken first (the order a
    stable sort of the distances gives): the ``count``-th smallest distance is found by a
    selection, every value closer is taken, and the rest come from the values at exactly that
    distance in row order."""
    distance = (rows - _coordinate_median(rows)).abs()
    threshold = _order_statistics(distance, [count - 1])[0].to(distance.device)
    closer = distance < threshold
    at_threshold = distance == threshold
    missing = count - closer.sum(dim=0)
    if bool((at_threshold.sum(dim=0) == missing).all()):  # no column has more ties than places
        chosen = closer | at_threshold
    else:
        chosen = closer | (at_threshold & (at_threshold.cumsum(dim=0) <= missing))
    return _mean(torch.where(chosen, rows, rows.new_zeros(())), count)


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class Component:
    """Checkpointing and repr shared by server rules and update-level attacks: stateless ones
    checkpoint as nothing, stateful ones (SparseFed, PoisonedFL) override the two methods."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, Tensor))
        return f"{type(self).__name__}({params})"


class Aggregator(Component):
    """Base rule: set aside non-finite rows, run ``_aggregate`` on the rest.

    Rules with ``takes_counters`` also accept ``counters[n, L]`` (module docstring), passed to
    ``_aggregate`` for the kept rows.
    """

    takes_counters = False

    def __call__(self, updates: Tensor, counters: Tensor | None = None) -> Aggregation:
        finite_updates, finite_rows, rejected_rows = _split_finite(updates)
        if counters is not None:
            counters = _check_counters(counters, updates.shape[0], type(self).__name__, self.takes_counters)
        if not finite_rows:
            return Aggregation(updates.new_zeros(updates.shape[1]), [], rejected_rows)
        if counters is None:
            update, kept_local = self._aggregate(finite_updates)
        else:
            update, kept_local = self._aggregate(finite_updates, counters[finite_rows].to(finite_updates.device))
        kept = sorted(finite_rows[i] for i in kept_local)
        return Aggregation(update, kept, rejected_rows)

    def _aggregate(self, updates: Tensor) -> tuple[Tensor, list[int]]:
        raise NotImplementedError



class FedAvg(Aggregator):
    """Mean of the rows; ``weights`` (one per input row, e.g. client data sizes) makes it weighted."""

    def __call__(self, updates: Tensor, weights: Tensor | Sequence[float] | None = None) -> Aggregation:
        if weights is None and updates.dim() == 2 and updates.is_floating_point() and updates.shape[0] > 0:
            # One pass: a NaN or Inf in any row makes its column's mean non-finite, so a finite
            # mean means every row was finite and there is nothing to set aside.
            mean = updates.mean(dim=0)
            if bool(torch.isfinite(mean).all()):
                return Aggregation(mean, list(range(updates.shape[0])), [])
        finite_updates, finite_rows, rejected_rows = _split_finite(updates)
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=finite_updates.dtype, device=finite_updates.device)
            if weights.shape != (updates.shape[0],):
                raise ValueError(
                    f"weights must hold one value per update row ({updates.shape[0]}), "
                    f"got shape {tuple(weights.shape)}"
                )
            if not torch.isfinite(weights).all() or (weights < 0).any():
                raise ValueError(f"weights must be finite and >= 0, got {weights.tolist()}")
        if not finite_rows:
            return Aggregation(updates.new_zeros(updates.shape[1]), [], rejected_rows)
        if weights is None:
            update = _mean(finite_updates)
        else:
            kept_weights = weights[finite_rows]
            total = kept_weights.sum()
            if total <= 0:
                raise ValueError(
                    f"the weights of the finite rows {finite_rows} sum to {float(total)}; "
                    "at least one kept row needs a positive weight"
                )
            update = kept_weights @ finite_updates / total
            if not bool(torch.isfinite(update).all()):  # the weighted sum overflowed: normalise first
                update = (kept_weights / total) @ finite_updates
        return Aggregation(update, list(finite_rows), rejected_rows)


class Krum(Aggregator):
    """The single row with the lowest Krum score (Blanchard et al. 2017)."""

    def __init__(self, f: int):
        self.f = _check_count("f", f, 0)

    def _aggregate(self, updates: Tensor) -> tuple[Tensor, list[int]]:
        scores = _krum_scores(_pairwise_squared_distances(updates), self.f)
        best = _lowest(scores, 1)[0]
        return updates[best].clone(), [best]


class MultiKrum(Aggregator):
    """Unweighted mean of the ``m`` rows with the lowest Krum scores; ``m=None`` means ``n - f``."""

    def __init__(self, f: int, m: int | None = None):
        self.f = _check_count("f", f, 0)
        self.m = None if m is None else _check_count("m", m, 1)

    def _aggregate(self, updates: Tensor) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        m = n - self.f if self.m is None else self.m
        m = min(n, max(1, m))  # rejected rows may leave fewer than m
        chosen = _lowest(_krum_scores(_pairwise_squared_distances(updates), self.f), m)
        return _mean(updates[chosen]), chosen


class Bulyan(Aggregator):
    """Bulyan over Krum (El Mhamdi et al. 2018).

    Each Krum pick runs on the rows not yet picked, with the same ``f``. The last picks see fewer
    than ``2f + 3`` rows, so the neighbour count is held at one or more; equal scores go to the
    lower row index. ``kept`` is the selection set.

    ``build_aggregator`` refuses ``n < 4f + 3``. If rejected rows shrink ``n`` below that in a
    round, that round uses the largest ``f`` the remaining rows allow.
    """

    def __init__(self, f: int):
        self.f = _check_count("f", f, 0)

    def _aggregate(self, updates: Tensor) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        f = min(self.f, max(0, (n - 3) // 4))
        selection_size = n - 2 * f  # theta
        closest_count = selection_size - 2 * f  # beta

        # Krum picks one row at a time from the rows not yet picked. Each row's distances are
        # sorted once; a pick's score is the sum of the first `neighbours` distances to rows
        # still in play, taken in that order -- the same values, summed in the same order, as a
        # top-k over the remaining rows.
        distances = _pairwise_squared_distances(updates)
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
                neighbours = _krum_neighbours(remaining, f)
                others = in_play[order[rows]]  # [remaining, n]: in sorted order, still in play?
                taken = others & (others.cumsum(dim=1) <= neighbours)
                scores = nearest[rows][taken].view(remaining, neighbours).sum(dim=1)
                winner = int(rows[_lowest(scores, 1)[0]])
            selected.append(winner)
            in_play[winner] = False

        index = torch.tensor(selected, device=updates.device)
        update = _per_column_chunk(
            updates, lambda block: _mean_closest_to_median(block.index_select(0, index), closest_count)
        )
        return update, selected


class Median(Aggregator):
    """Coordinate-wise median; for even ``n`` the mean of the two middle values."""

    def _aggregate(self, updates: Tensor) -> tuple[Tensor, list[int]]:
        return _per_column_chunk(updates, _coordinate_median), list(range(updates.shape[0]))


class TrimmedMean(Aggregator):
    """Coordinate-wise mean after dropping ``floor(beta * n)`` largest and smallest values."""

    def __init__(self, beta: float = 0.1):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 0.5:
            raise ValueError(f"beta must be a number in [0, 0.5), got {beta!r}")
        self.beta = float(beta)

    def _aggregate(self, updates: Tensor) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        # The small epsilon keeps e.g. 0.3 * 10 = 3.0000000000000004 and 0.29 * 100 = 28.999... exact.
        trimmed = math.floor(self.beta * n + 1e-9)
        if trimmed == 0:
            return _mean(updates), list(range(n))

        def trimmed_mean(rows: Tensor) -> Tensor:
            if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
                # np.partition with both cut ranks leaves exactly the untrimmed values between them.
                middle = torch.from_numpy(np.partition(rows.detach().numpy(), [trimmed, n - trimmed - 1], axis=0))
            else:
                middle = rows.sort(dim=0).values
            return _mean(middle[trimmed : n - trimmed])

        return _per_column_chunk(updates, trimmed_mean), list(range(n))


class SparseFed(Aggregator):
    """Client L2 clipping + server global top-k with error feedback (Panda et al. 2022).

    ``k`` is a fraction of the coordinates in (0, 1] or a count > 1 (a count above ``d`` keeps all).
    ``clip=None`` disables clipping. The error accumulator is the rule's state: save it with
    ``state_dict()`` and restore it with ``load_state_dict()`` when a run resumes. A round whose
    rows are all non-finite returns zeros and leaves the accumulator untouched.
    """

    def __init__(self, k: float = 0.1, clip: float | None = 1.0):
        self.k = _check_sparsefed_k(k)
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
            raise ValueError(f"clip must be a number > 0 or None, got {clip!r}")
        self.clip = None if clip is None else float(clip)
        self.error: Tensor | None = None

    def keep_count(self, d: int) -> int:
        if self.k <= 1:
            return max(1, int(self.k * d))
        return min(d, int(self.k))

    def _aggregate(self, updates: Tensor) -> tuple[Tensor, list[int]]:
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
        accumulated = error + _mean(updates)
        if not bool(torch.isfinite(accumulated).all()):
            # Error and mean both finite, their sum beyond the dtype's range: it saturates at the
            # largest finite value, so no Inf enters the update or the accumulator.
            largest = torch.finfo(updates.dtype).max
            accumulated = (error.double() + _mean(updates).double()).clamp(-largest, largest).to(updates.dtype)
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


def _check_counters(counters: Tensor, rows: int, rule: str, accepted: bool) -> Tensor:
    if not accepted:
        raise ValueError(
            f"{rule} takes no BatchNorm counters; only {', '.join(COUNTER_AGGREGATORS)} add them to their distances"
        )
    counters = torch.as_tensor(counters)
    if counters.dim() != 2 or counters.shape[0] != rows:
        raise ValueError(
            f"counters must be [clients, BatchNorm layers] with one row per update ({rows}), "
            f"got shape {tuple(counters.shape)}"
        )
    if not bool(torch.isfinite(counters.double()).all()):
        raise ValueError("counters must be finite forward-pass counts")
    return counters.to(torch.float64)


def _distances_with_counters(updates: Tensor, counters: Tensor | None) -> Tensor:
    """Squared distances of the rows, plus those of their counter rows when given (float64)."""
    distances = _pairwise_squared_distances(updates)
    if counters is None or counters.shape[1] == 0:
        return distances
    difference = counters[:, None, :] - counters[None, :, :]  # exact: whole numbers in float64
    return distances + (difference * difference).sum(dim=2)


class FltkMultiKrum(Aggregator):
    """Compatibility rule: what the LeadFL reference code runs as ``multiKrum``.

    Score = sum of the 8 smallest squared distances counting the zero self-distance, i.e. the 7
    nearest other rows (standard Multi-Krum with n = 10 would use n - f - 2); the unweighted mean
    of the 5 lowest scores. The constants ignore ``n`` and ``f``; with fewer rows they are capped.
    Takes the BatchNorm ``counters`` (module docstring).
    """

    takes_counters = True

    def __init__(self, nearest: int = 7, m: int = 5):
        self.nearest = _check_count("nearest", nearest, 1)
        self.m = _check_count("m", m, 1)

    def _aggregate(self, updates: Tensor, counters: Tensor | None = None) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        scores = _sum_of_nearest(_distances_with_counters(updates, counters), min(self.nearest, max(1, n - 1)))
        chosen = _lowest(scores, self.m)
        return _mean(updates[chosen]), chosen


class FltkBulyan(Aggregator):
    """Compatibility rule: what the LeadFL reference code runs as ``bulyan`` (it is not Bulyan).

    Score = sum of the 7 smallest squared distances counting the zero self-distance (6 nearest
    others); rows ranked by score; the unweighted mean of ranks 2, 3 and 4 -- the best-scored row
    is skipped, and there is no coordinate-wise step. With a single row, that row is returned.
    Takes the BatchNorm ``counters`` (module docstring).
    """

    takes_counters = True

    def __init__(self, nearest: int = 6, first_rank: int = 1, last_rank: int = 4):
        self.nearest = _check_count("nearest", nearest, 1)
        self.first_rank = _check_count("first_rank", first_rank, 0)
        self.last_rank = _check_count("last_rank", last_rank, self.first_rank + 1)

    def _aggregate(self, updates: Tensor, counters: Tensor | None = None) -> tuple[Tensor, list[int]]:
        n = updates.shape[0]
        scores = _sum_of_nearest(_distances_with_counters(updates, counters), min(self.nearest, max(1, n - 1)))
        ranked = _lowest(scores, n)
        chosen = ranked[self.first_rank : self.last_rank] or ranked[:1]
        return _mean(updates[chosen]), chosen


def two_means_low_cluster(scores: Tensor) -> list[int]:
    """Indices of the lower cluster of the best split of 1-D ``scores`` into two groups.

    Exact 2-means in one dimension: after sorting, every optimal clustering is a split into a
    low and a high run, so each of the ``n - 1`` split points is tried and the one with the
    smallest within-cluster sum of squares wins (ties: the split with fewer low rows). When all
    scores are equal there is nothing to separate and every row is returned.
    """
    n = scores.shape[0]
    values = scores.double()
    if n < 2 or bool((values == values[0]).all()):
        return list(range(n))
    order = torch.sort(values, stable=True).indices
    ordered = values[order]
    # Every split at once: row s-1 of the [n-1, n] tables is the split into ordered[:s] and
    # ordered[s:]; each value's squared deviation from the mean of its own side, summed per row.
    splits = torch.arange(1, n, dtype=torch.float64, device=values.device)
    prefix = ordered.cumsum(dim=0)[:-1]
    low_mean = prefix / splits
    high_mean = (ordered.sum() - prefix) / (n - splits)
    in_low = torch.arange(n, device=values.device)[None, :] < splits[:, None]
    side_mean = torch.where(in_low, low_mean[:, None], high_mean[:, None])
    costs = (ordered[None, :] - side_mean).square().sum(dim=1)
    best_split = int(torch.sort(costs, stable=True).indices[0]) + 1  # ties: the fewest low rows
    return sorted(order[:best_split].tolist())


class RobustDPFL(Aggregator):
    """Robust-DPFL (Qi, Wang, Huang, AAAI 2024): keep the rows whose |mean of coordinates| falls
    in the lower of two 2-means clusters, and average them.

    Honest DP uploads are dominated by zero-mean noise, whose coordinate mean is about
    sigma / sqrt(d); a poisoned update rescaled to the noisy norm keeps its own, larger, mean.
    (The authors' code scores the uploaded model vectors; here, as for every rule, the rows are
    updates. It clusters with scikit-learn's KMeans; the exact 1-D split is what KMeans aims for.)
    """

    @staticmethod
    def scores(updates: Tensor) -> Tensor:
        n, d = updates.shape
        sums = updates.new_zeros(n, dtype=torch.float64)
        starts, step = _column_chunks(n, d)
        for start in starts:  # chunks: no [n, d] float64 copy of the updates
            sums += updates[:, start : start + step].to(torch.float64).sum(dim=1)
        return (sums / d).abs()

    def _aggregate(self, updates: Tensor) -> tuple[Tensor, list[int]]:
        kept = two_means_low_cluster(self.scores(updates))
        return _mean(updates[kept]), kept


AGGREGATORS: dict[str, type[Aggregator]] = {
    "fedavg": FedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "sparsefed": SparseFed,
    "fltk_multikrum": FltkMultiKrum,
    "fltk_bulyan": FltkBulyan,
    "robust_dpfl": RobustDPFL,
}


# Rules that add the BatchNorm forward-pass counters to their distances (server.fltk_counters).
COUNTER_AGGREGATORS = tuple(name for name, rule in AGGREGATORS.items() if rule.takes_counters)


# Names a user may reach for that the simulator deliberately does not provide, with the reason.
UNAVAILABLE_AGGREGATORS = {
    "prodigy": (
        "server.aggregator='prodigy' (ProDiGy, Ergisi, Massny, Bitar, arXiv 2509.09534) is not implemented: its "
        "proximity and dissimilarity scoring formulas are not available to this project (no public code, and "
        "the paper body could not be read), and a rule invented under its name would misreport it; allowed: "
        + ", ".join(AGGREGATORS)
        + "; fix: --set server.aggregator=multikrum (or median, trimmed_mean, robust_dpfl)"
    ),
}


def _check_sparsefed_k(k: Any) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"k must be a fraction in (0, 1] or an integer count > 1, got {k!r}")
    if k > 1 and not float(k).is_integer():
        raise ValueError(
            f"k={k!r} is above 1, so it is read as a count of coordinates, which must be whole; "
            "use a fraction in (0, 1] or an integer count"
        )
    return float(k)


def default_f(clients_per_round: int, num_clients: int, num_malicious: int) -> int:
    """Expected malicious clients among those selected, rounded up: ceil(n * M / N)."""
    return -(-clients_per_round * num_malicious // num_clients)


def byzantine_f(server: Any, clients_per_round: int, num_clients: int, num_malicious: int) -> int:
    """The Byzantine count krum/multikrum/bulyan assume: `server.f`, or else `default_f`."""
    configured = _read(server, "f", None)
    return default_f(clients_per_round, num_clients, num_malicious) if configured is None else configured


def _read(server: Any, name: str, default: Any) -> Any:
    if isinstance(server, Mapping):
        return server.get(name, default)
    return getattr(server, name, default)


# Rules that assume f Byzantine rows: name -> (k in "n >= k*f + 3", the rule's name in messages).
_F_REQUIREMENTS = {"krum": (2, "Krum"), "multikrum": (2, "Multi-Krum"), "bulyan": (4, "Bulyan")}


def build_aggregator(server: Any, clients_per_round: int, num_clients: int, num_malicious: int) -> Aggregator:
    """Build the rule named by ``server.aggregator`` (a mapping or an object with the fields
    of the ``server`` config section), checking every setting against ``clients_per_round``
    before any training starts.

    ``server.f = null`` resolves to ``default_f``: the expected number of malicious clients among
    those selected, rounded up (3 for the default 10 of 100 with 25 malicious). It is not lowered
    to fit a rule; a rule that cannot tolerate it is refused with a message saying what to change.
    """
    for field, value, minimum in (
        ("clients.clients_per_round", clients_per_round, 1),
        ("clients.num_clients", num_clients, 1),
        ("clients.num_malicious", num_malicious, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{field}={value!r} is invalid: it must be an integer >= {minimum}")
    if num_malicious > num_clients:
        raise ConfigError(
            f"clients.num_malicious={num_malicious} exceeds clients.num_clients={num_clients}; "
            f"lower num_malicious to at most {num_clients}"
        )

    name = _read(server, "aggregator", "multikrum")
    if isinstance(name, str) and name in UNAVAILABLE_AGGREGATORS:
        raise ConfigError(UNAVAILABLE_AGGREGATORS[name])
    if name not in AGGREGATORS:
        raise ConfigError(
            f"server.aggregator={name!r} is not a known rule; allowed: {', '.join(AGGREGATORS)}"
        )
    n = clients_per_round

    if name in _F_REQUIREMENTS:
        factor, rule = _F_REQUIREMENTS[name]
        configured_f = _read(server, "f", None)
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
        if name != "multikrum":
            return AGGREGATORS[name](f)
        m = _read(server, "m", None)
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n):
            raise ConfigError(
                f"server.m={m!r} is invalid for multikrum with clients_per_round={n}: it must be an "
                f"integer in [1, {n}] or null (= n - f = {n - f})"
            )
        return MultiKrum(f, m)

    if name == "trimmed_mean":
        beta = _read(server, "trim_beta", 0.1)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 0.5:
            raise ConfigError(
                f"server.trim_beta={beta!r} is invalid for trimmed_mean: it must be a number in "
                f"[0, 0.5) (the share trimmed from each end per coordinate)"
            )
        return TrimmedMean(beta)

    if name == "sparsefed":
        k = _read(server, "sparsefed_k", 0.1)
        clip = _read(server, "sparsefed_clip", 1.0)
        try:
            _check_sparsefed_k(k)
        except ValueError:
            raise ConfigError(
                f"server.sparsefed_k={k!r} is invalid for sparsefed: it must be a fraction of the "
                "coordinates in (0, 1] or a whole count > 1"
            ) from None
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
            raise ConfigError(
                f"server.sparsefed_clip={clip!r} is invalid: it must be a number > 0 "
                "(the client update L2 bound) or null for no clipping"
            )
        return SparseFed(k, clip)

    return AGGREGATORS[name]()
