"""``flame(noise, min_cluster_size, cluster_on)`` -- FLAME (Nguyen et al., USENIX Security 2022,
"FLAME: Taming Backdoors in Federated Learning", Algorithm 1).

For the ``n`` rows (updates ``u_i``; local models ``w_i = G + u_i`` with ``G`` the round's global
model):

1. ``c_ij = 1 - cos(w_i, w_j)`` (``cluster_on: model``, the paper) or ``1 - cos(u_i, u_j)``
   (``cluster_on: update``); a zero vector has cosine 0 with everything.
2. HDBSCAN (scikit-learn's) on that precomputed distance matrix with
   ``min_cluster_size = n // 2 + 1`` (a majority; settable), ``min_samples = 1``,
   ``allow_single_cluster = True``: the rows of the largest cluster are admitted. If HDBSCAN
   finds no cluster (every row is noise), every row is admitted.
3. ``e_i = ||u_i||`` (the distance of the local model to ``G``), ``S = median(e_1..e_n)`` over all
   ``n`` rows (the mean of the two middle values for even ``n``); each admitted row is scaled by
   ``min(1, S / e_i)``.
4. The update is the mean of the admitted, clipped rows plus ``N(0, (noise * S)^2)`` on every
   coordinate, drawn from the round's aggregation stream (``noise`` is the paper's lambda;
   0.001 is BackFed's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.errors import ConfigError
from sim.lazy import np, torch
from sim.server.aggregate import gram_matrix, row_dots, weighted_rows
from sim.server.base import AggregationContext, Aggregator, ServerSetup
from sim.settings import setting

if TYPE_CHECKING:
    from torch import Tensor

CLUSTER_ON = ("model", "update")


@dataclass
class FlameSettings:
    noise: float = setting(0.001, "float", low=0,
                           help="lambda: the noise std is lambda times the median update norm (0.001: BackFed's default)")
    min_cluster_size: int | None = setting(None, "int", low=2, nullable=True,
                                           help="HDBSCAN's min_cluster_size; null: n // 2 + 1 (a majority)")
    cluster_on: str = setting("model", "str", choices=CLUSTER_ON,
                              help="cosine distances between the local models (global + update, the paper) or the updates")


def cosine_distances(rows: Tensor, offset: Tensor | None = None) -> np.ndarray:
    """``1 - cos`` between the rows (plus ``offset``, a ``[d]`` vector added to every row), float64
    ``[n, n]``, symmetric with a zero diagonal; a zero row has cosine 0 with every row."""
    gram = gram_matrix(rows, offset)
    norms = gram.diagonal().sqrt()
    scale = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
    cosine = (gram * scale[:, None] * scale[None, :]).clamp(-1, 1)
    distances = 1 - (cosine + cosine.T) / 2
    distances.fill_diagonal_(0)
    return distances.cpu().numpy()


def majority_cluster(distances: np.ndarray, min_cluster_size: int) -> list[int]:
    """The rows of the largest HDBSCAN cluster (ties: the lowest label); all rows if none."""
    n = distances.shape[0]
    if n < 2:
        return list(range(n))
    from sklearn.cluster import HDBSCAN  # here, so that configuring a run does not load scikit-learn

    labels = HDBSCAN(min_cluster_size=min(min_cluster_size, n), min_samples=1, metric="precomputed",
                     allow_single_cluster=True, copy=True).fit(distances).labels_
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return list(range(n))
    found, counts = np.unique(clustered, return_counts=True)
    largest = found[np.argmax(counts)]  # argmax: the first of equal counts, the lowest label
    return [i for i in range(n) if labels[i] == largest]


class Flame(Aggregator):
    """FLAME: cosine HDBSCAN filter, median-norm clipping, Gaussian noise (docs/algorithms.md §3.12)."""

    settings = FlameSettings

    @classmethod
    def check(cls, settings: FlameSettings, setup: ServerSetup) -> dict[str, Any]:
        size, n = settings.min_cluster_size, setup.clients_per_round
        if size is not None and size > n:
            raise ConfigError(
                f"server.flame.min_cluster_size={size} is larger than clients.clients_per_round={n}: no cluster "
                f"could form; it must be an integer in [2, {n}] or null (n // 2 + 1 = {n // 2 + 1}); "
                "fix: --set server.flame.min_cluster_size=null"
            )
        return {"noise": settings.noise, "min_cluster_size": size, "cluster_on": settings.cluster_on}

    def __init__(self, noise: float = 0.001, min_cluster_size: int | None = None, cluster_on: str = "model"):
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0 or noise == float("inf"):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        if min_cluster_size is not None and (
            isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, int) or min_cluster_size < 2
        ):
            raise ValueError(f"min_cluster_size must be an integer >= 2 or None, got {min_cluster_size!r}")
        if cluster_on not in CLUSTER_ON:
            raise ValueError(f"cluster_on must be one of {', '.join(CLUSTER_ON)}, got {cluster_on!r}")
        self.noise, self.min_cluster_size, self.cluster_on = float(noise), min_cluster_size, cluster_on
        self.needs = frozenset({"generator", "global_params"} if cluster_on == "model" else {"generator"})

    def admitted(self, updates: Tensor, global_params: Tensor | None) -> list[int]:
        n = updates.shape[0]
        if self.cluster_on == "model" and global_params is None:
            raise ValueError("flame with cluster_on='model' needs the round's global parameters")
        offset = global_params if self.cluster_on == "model" else None
        size = n // 2 + 1 if self.min_cluster_size is None else self.min_cluster_size
        return majority_cluster(cosine_distances(updates, offset), size)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        admitted = self.admitted(updates, context.global_params)
        norms = row_dots(updates, updates.new_zeros(updates.shape[1]))[1].sqrt()  # float64, no copy of the rows
        bound = float(np.median(norms.cpu().numpy()))
        factors = torch.where(norms > bound, bound / norms, torch.ones_like(norms))
        coefficients = torch.zeros_like(factors)
        coefficients[admitted] = factors[admitted] / len(admitted)
        update = weighted_rows(coefficients[None, :], updates)[0]
        if self.noise > 0:
            if context.generator is None:
                raise ValueError("flame needs the round's generator for its noise")
            noise = torch.randn(updates.shape[1], generator=context.generator, dtype=torch.float64)
            update = update + (noise * (self.noise * bound)).to(device=update.device, dtype=update.dtype)
        return update, admitted
