"""``prodigy(f, nnm)`` -- ProDiGy (Ergisi, Massny, Bitar, FLTA 2025, arXiv 2509.09534), as the
authors' code (GitHub ``senaergisi/prodigy``, ``defenses.prodigy`` and ``predefenses.nnm``)
computes it, with the edge cases their code leaves open decided below (docs/algorithms.md §3.5).

For the ``n`` rows ``g_1..g_n`` and the assumed Byzantine count ``f`` (``server.f``), ``k = f - 1``:

* ``D_ij = ||g_i - g_j||^2``. Row ``i``'s other rows sorted by ``D_ij`` ascending, equal distances
  in row order (a stable sort).
* ``S_i`` = row ``i`` and its ``k`` nearest other rows (``f`` rows).
  ``s1_i = ||std(S_i)|| / ||mean(S_i)||``, per-coordinate population std and mean over ``S_i``.
* ``s2_i`` = the sum of row ``i``'s sorted distances at positions ``k .. n - f - 2`` (0-based).
* ``s_i = s1_i / s2_i``. Every row whose score equals one of the ``f`` lowest scores gets ``0``
  (exact ties can zero more than ``f`` rows).
* The update is ``sum_i s_i g_i / sum_j s_j``.

Decided edge cases: ``f >= 2`` and ``n >= 2f + 1`` are required (``f < 2`` makes every ``s1``
zero, ``n <= 2f`` leaves ``s2`` an empty sum), refused when the rule is built; when non-finite rows
leave fewer rows in a round, that round uses ``f = min(f, (n - 1) // 2)``, and with fewer than
five rows (``f < 2``) the update is zero. ``0 / 0`` (a neighbourhood of equal rows) is a score of
``0``; a positive ``||std||`` over a zero mean (or a zero ``s2``) is a score of ``+inf``, and the
rows with infinite scores then share the weight equally (the limit of the weighted mean). If
every score is ``0`` the update is zero and no row is kept.

``nnm=True`` first replaces every row by the mean of itself and its ``n - f - 1`` nearest other
rows (nearest-neighbour mixing, Allouah et al. 2023), as the authors' ``predefenses.nnm``; the
rule then runs on the mixed rows, and ``kept`` lists the rows whose mixed row has weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.errors import ConfigError
from sim.lazy import torch
from sim.server.aggregate import pairwise_squared_distances, row_dots, weighted_rows
from sim.server.base import AggregationContext, Aggregator, ServerSetup
from sim.server.krum import default_f
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class ProdigySettings:
    nnm: bool = setting(False, "bool", help="nearest-neighbour mixing (n - f - 1 nearest) before the rule")


def sorted_neighbours(distances: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the other rows in ascending distance (equal distances in row order) and those
    distances: two ``[n, n - 1]`` tensors."""
    n = distances.shape[0]
    position = torch.arange(n - 1, device=distances.device)
    others = position[None, :] + (position[None, :] >= torch.arange(n, device=distances.device)[:, None])
    to_others = distances.gather(1, others)
    order = torch.sort(to_others, dim=1, stable=True).indices
    return others.gather(1, order), to_others.gather(1, order)


def neighbourhoods(nearest: Tensor, count: int) -> Tensor:
    """``[n, n]`` float64 0/1: row ``i`` and its ``count`` nearest other rows."""
    n = nearest.shape[0]
    member = torch.eye(n, dtype=torch.float64, device=nearest.device)
    if count > 0:
        member.scatter_(1, nearest[:, :count], 1.0)
    return member


def mix(rows: Tensor, weights: Tensor) -> Tensor:
    """``weights @ rows`` (``weights`` float64 ``[m, n]``), accumulated in float64, returned in the
    rows' dtype."""
    return weighted_rows(weights, rows)


def squared_norms(rows: Tensor) -> Tensor:
    """``||row||^2`` per row in float64."""
    return row_dots(rows, rows.new_zeros(rows.shape[1]))[1]


def nnm_weights(distances: Tensor, f: int) -> Tensor:
    """Nearest-neighbour mixing as a ``[n, n]`` float64 matrix: row ``i`` averages row ``i`` and
    its ``n - f - 1`` nearest other rows."""
    n = distances.shape[0]
    nearest, _ = sorted_neighbours(distances)
    count = n - f
    return neighbourhoods(nearest, count - 1) / count


def prodigy_scores(distances: Tensor, norms: Tensor, f: int) -> Tensor:
    """The scores ``s_i`` before the ``f`` lowest are zeroed (float64 ``[n]``).

    ``||std(S)||^2 = sum_{j<l in S} D_jl / f^2`` and ``||mean(S)||^2 = sum_{j in S} ||g_j||^2 / f -
    ||std(S)||^2``: both from the distances and the row norms, without forming the means."""
    n = distances.shape[0]
    nearest, ascending = sorted_neighbours(distances)
    member = neighbourhoods(nearest, f - 1)
    spread = ((member @ distances) * member).sum(dim=1) / (2 * f * f)  # ||std||^2
    centre = (member @ norms) / f - spread  # ||mean||^2
    s1 = torch.where(
        spread == 0, torch.zeros_like(spread), spread.sqrt() / centre.clamp(min=0).sqrt()
    )  # x / 0 = inf for x > 0
    s2 = ascending[:, f - 1 : n - f - 1].sum(dim=1)
    return torch.where(s1 == 0, torch.zeros_like(s1), s1 / s2)


def survivor_weights(scores: Tensor, f: int) -> Tensor:
    """The weights of the rows (float64, summing to 1, or all 0): the rows whose score is one of
    the ``f`` lowest get 0, the rest their share of the scores' sum; infinite scores share
    everything equally."""
    lowest = torch.sort(scores).values[:f]
    scores = torch.where(torch.isin(scores, lowest), torch.zeros_like(scores), scores)
    infinite = torch.isinf(scores)
    if bool(infinite.any()):
        return infinite.to(torch.float64) / int(infinite.sum())
    total = scores.sum()
    return scores / total if float(total) > 0 else torch.zeros_like(scores)


class Prodigy(Aggregator):
    """ProDiGy's score-weighted mean of the rows (docs/algorithms.md §3.5)."""

    settings = ProdigySettings

    @classmethod
    def check(cls, settings: ProdigySettings, setup: ServerSetup) -> dict[str, Any]:
        n, configured = setup.clients_per_round, setup.f
        if configured is None:
            f = default_f(n, setup.num_clients, setup.num_malicious)
            shown = (f"{f} (server.f=null resolves to ceil(clients_per_round*num_malicious/num_clients) = "
                     f"ceil({n}*{setup.num_malicious}/{setup.num_clients}))")
        elif isinstance(configured, bool) or not isinstance(configured, int) or configured < 0:
            raise ConfigError(
                f"server.f={configured!r} is invalid for prodigy: it must be an integer >= 2 or null; "
                "fix: --set server.f=2"
            )
        else:
            f, shown = configured, str(configured)
        largest = (n - 1) // 2
        if f < 2 or n < 2 * f + 1:
            if largest >= 2:
                fix = f"--set server.f={max(2, min(f, largest))}"
            else:
                fix = "--set clients.clients_per_round=5 --set server.f=2"
            raise ConfigError(
                f"server.f={shown} is impossible for prodigy with clients_per_round={n}: ProDiGy needs "
                f"2 <= f (its neighbourhoods hold f rows) and n >= 2f + 1 (its proximity score sums the "
                f"distances at ranks f-1 .. n-f-2); fix: {fix}"
            )
        return {"f": f, "nnm": settings.nnm}

    def __init__(self, f: int, nnm: bool = False):
        if isinstance(f, bool) or not isinstance(f, int) or f < 2:
            raise ValueError(f"f must be an integer >= 2, got {f!r}")
        if not isinstance(nnm, bool):
            raise ValueError(f"nnm must be true or false, got {nnm!r}")
        self.f, self.nnm = f, nnm

    def weights(self, updates: Tensor) -> tuple[Tensor, Tensor]:
        """The weight of each row and the ``[n, n]`` float64 matrix whose rows the weights apply
        to (the identity, or the NNM mixing): the update is ``weights @ mixing @ updates``."""
        n = updates.shape[0]
        f = min(self.f, (n - 1) // 2)
        identity = torch.eye(n, dtype=torch.float64, device=updates.device)
        if f < 2:
            return torch.zeros(n, dtype=torch.float64, device=updates.device), identity
        distances = pairwise_squared_distances(updates)
        mixing, rows = identity, updates
        if self.nnm:
            mixing = nnm_weights(distances, f)
            # Rows that mix the same set are equal in exact arithmetic; each set is mixed once so
            # they are equal to the bit too (a matrix product's rows may round differently).
            sets, which = torch.unique(mixing, dim=0, return_inverse=True)
            rows = mix(updates, sets)[which]
            distances = pairwise_squared_distances(rows)
        return survivor_weights(prodigy_scores(distances, squared_norms(rows), f), f), mixing

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        weights, mixing = self.weights(updates)
        kept = weights.nonzero().flatten().tolist()
        if not kept:
            return updates.new_zeros(updates.shape[1]), []
        return mix(updates, (weights @ mixing)[None, :])[0], kept

