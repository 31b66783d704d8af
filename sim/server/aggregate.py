"""The maths the aggregation rules share, as plain functions on ``[n, d]`` tensors.

Distances between rows, Krum scores, coordinate-wise order statistics, overflow-safe means and
the exact 1-D two-means split. Each rule file (``sim.server.krum``, ``sim.server.coordinatewise``...)
combines these; none of them knows a configuration.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sim.lazy import np, torch


if TYPE_CHECKING:
    from torch import Tensor

def split_finite(updates: Tensor) -> tuple[Tensor, list[int], list[int]]:
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
CHUNK_ELEMENTS = 1 << 19


# Elements per column chunk of the coordinate-wise rules (median, trimmed mean, Bulyan's last
# step): each chunk's copies (partition, distances, masks) stay small whatever d is.
COORDINATE_CHUNK_ELEMENTS = 1 << 22


def column_chunks(n: int, d: int) -> tuple[range, int]:
    step = max(1, CHUNK_ELEMENTS // max(n, 1))
    return range(0, d, step), step


def per_column_chunk(rows: Tensor, rule) -> Tensor:
    """A coordinate-wise ``rule`` (a function of an [n, c] block returning [c]) over the columns
    of ``rows``, a chunk at a time."""
    n, d = rows.shape
    step = max(1, COORDINATE_CHUNK_ELEMENTS // max(n, 1))
    if step >= d:
        return rule(rows)
    return torch.cat([rule(rows[:, start : start + step]) for start in range(0, d, step)])


def pairwise_squared_distances(rows: Tensor) -> Tensor:
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
    starts, step = column_chunks(n, d)
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


def distances_to_point(rows: Tensor, point: Tensor) -> Tensor:
    """Euclidean distance of every row to ``point`` ([d]), float64 [n].

    Differences are taken a column chunk at a time in the rows' dtype, so no [n, d] copy is
    made; each chunk's squared norms are summed in float64. A chunk whose float32 norms overflow
    (differences beyond ~1e19) is taken again in float64."""
    n, d = rows.shape
    squared = torch.zeros(n, dtype=torch.float64, device=rows.device)
    point = point.to(device=rows.device, dtype=rows.dtype)
    starts, step = column_chunks(n, d)
    for start in starts:
        difference = rows[:, start : start + step] - point[start : start + step]
        norms = torch.linalg.vector_norm(difference, dim=1)
        if not bool(torch.isfinite(norms).all()):
            norms = torch.linalg.vector_norm(difference.to(torch.float64), dim=1)
        squared += norms.to(torch.float64).square()
    return squared.sqrt()


def weighted_row_sum(weights: Tensor, rows: Tensor) -> Tensor:
    """``sum_i weights[i] * rows[i]`` ([d], the rows' dtype) for float64 ``weights`` [n], as one
    matrix-vector product; for weights that sum to at most 1 (a convex combination, as the
    clipping and Weiszfeld rules use) the result cannot overflow."""
    return weights.to(device=rows.device, dtype=rows.dtype) @ rows


def krum_neighbours(n: int, f: int) -> int:
    # n - f - 2 when n >= 2f + 3. Bulyan's last picks, and rounds with rejected rows, see fewer
    # rows; the count is then kept in [1, n - 1] so a rule still returns a row mid-run.
    return min(n - 1, max(1, n - f - 2))


def sum_of_nearest(squared_distances: Tensor, neighbours: int) -> Tensor:
    """Per row, the sum of its ``neighbours`` smallest squared distances to the other rows."""
    n = squared_distances.shape[0]
    if n == 1:
        return squared_distances.new_zeros(1)
    self_mask = torch.eye(n, dtype=torch.bool, device=squared_distances.device)
    to_others = squared_distances.masked_fill(self_mask, math.inf)
    return torch.topk(to_others, neighbours, dim=1, largest=False).values.sum(dim=1)


def krum_scores(squared_distances: Tensor, f: int) -> Tensor:
    n = squared_distances.shape[0]
    return sum_of_nearest(squared_distances, krum_neighbours(n, f))


def lowest(scores: Tensor, count: int) -> list[int]:
    # A stable sort breaks ties by row order, so equal scores give the same pick on every run.
    return torch.sort(scores, stable=True).indices[:count].tolist()


def order_statistics(rows: Tensor, ranks: list[int]) -> Tensor:
    """Per coordinate, the values of the given 0-based ranks in ascending order: [len(ranks), d].

    On the CPU numpy's introselect (np.partition) finds them without sorting whole columns; on
    other devices the columns are sorted. Both give the exact order statistics."""
    if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
        values = rows.detach().numpy()
        partitioned = np.partition(values, ranks, axis=0)
        return torch.from_numpy(partitioned[ranks])
    return rows.sort(dim=0).values[ranks]


def midpoint(low: Tensor, high: Tensor) -> Tensor:
    middle = (low + high) / 2
    overflow = ~torch.isfinite(middle)
    if bool(overflow.any()):  # low + high beyond the dtype's range: halve first
        middle = torch.where(overflow, low / 2 + high / 2, middle)
    return middle


def coordinate_median(rows: Tensor) -> Tensor:
    n = rows.shape[0]
    if n % 2 == 1:
        return order_statistics(rows, [n // 2])[0]
    low, high = order_statistics(rows, [n // 2 - 1, n // 2])
    return midpoint(low, high)


def row_mean(rows: Tensor, divisor: int | None = None) -> Tensor:
    """Sum of the rows (dim 0) over ``divisor`` (default: their number), i.e. their mean.

    The sum runs in the rows' dtype; if it overflows (the rows are finite, so only a sum beyond
    the dtype's range gives Inf), it is taken again in float64, chunk by chunk, each row divided
    by the divisor first, so a mean of huge finite rows stays finite."""
    n, d = rows.shape
    mean = rows.mean(dim=0) if divisor is None else rows.sum(dim=0) / divisor
    if bool(torch.isfinite(mean).all()):
        return mean
    divisor = n if divisor is None else divisor
    starts, step = column_chunks(n, d)
    for start in starts:
        chunk = rows[:, start : start + step].to(torch.float64)
        mean[start : start + step] = (chunk / divisor).sum(dim=0).to(rows.dtype)
    return mean


def mean_closest_to_median(rows: Tensor, count: int) -> Tensor:
    """Per coordinate, the mean of the ``count`` values closest to the coordinate's median.

    Among values equally far from the median the lower row index is taken first (the order a
    stable sort of the distances gives): the ``count``-th smallest distance is found by a
    selection, every value closer is taken, and the rest come from the values at exactly that
    distance in row order."""
    distance = (rows - coordinate_median(rows)).abs()
    threshold = order_statistics(distance, [count - 1])[0].to(distance.device)
    closer = distance < threshold
    at_threshold = distance == threshold
    missing = count - closer.sum(dim=0)
    if bool((at_threshold.sum(dim=0) == missing).all()):  # no column has more ties than places
        chosen = closer | at_threshold
    else:
        chosen = closer | (at_threshold & (at_threshold.cumsum(dim=0) <= missing))
    return row_mean(torch.where(chosen, rows, rows.new_zeros(())), count)


def check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_counters(counters: Tensor, rows: int, rule: str, accepted: bool) -> Tensor:
    if not accepted:
        raise ValueError(
            f"{rule} takes no BatchNorm counters; only rules that declare them (the fltk_* rules) add them to their distances"
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


def distances_with_counters(updates: Tensor, counters: Tensor | None) -> Tensor:
    """Squared distances of the rows, plus those of their counter rows when given (float64)."""
    distances = pairwise_squared_distances(updates)
    if counters is None or counters.shape[1] == 0:
        return distances
    difference = counters[:, None, :] - counters[None, :, :]  # exact: whole numbers in float64
    return distances + (difference * difference).sum(dim=2)


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


def _on_numpy(rows: Tensor) -> bool:
    # numpy's BLAS: on the CPUs measured faster than torch's for float64 products (see above)
    return rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64)


def gram_matrix(rows: Tensor, offset: Tensor | None = None) -> Tensor:
    """``(r_i + offset) . (r_j + offset)`` in float64 ``[n, n]`` (``offset``: a ``[d]`` vector added
    to every row, or None), one column chunk at a time: no float64 copy of the rows is made."""
    n, d = rows.shape
    starts, step = column_chunks(n, d)
    if _on_numpy(rows):
        values = rows.detach().numpy()
        shift = None if offset is None else offset.detach().to("cpu", torch.float64).numpy()
        gram = np.zeros((n, n))
        buffer = np.empty((n, min(step, d)))
        for start in starts:
            width = min(step, d - start)
            chunk = buffer[:, :width]
            chunk[...] = values[:, start : start + width]
            if shift is not None:
                chunk += shift[start : start + width]
            gram += chunk @ chunk.T
        return torch.from_numpy(gram)
    gram = torch.zeros(n, n, dtype=torch.float64, device=rows.device)
    for start in starts:
        chunk = rows[:, start : start + step].to(torch.float64)
        if offset is not None:
            chunk = chunk + offset[start : start + step].to(device=rows.device, dtype=torch.float64)
        gram.addmm_(chunk, chunk.T)
    return gram


def weighted_rows(coefficients: Tensor, rows: Tensor) -> Tensor:
    """``coefficients @ rows`` (``coefficients`` float64 ``[m, n]``), accumulated in float64 a
    column chunk at a time and returned in the rows' dtype ``[m, d]``."""
    (m, _), (n, d) = coefficients.shape, rows.shape
    starts, step = column_chunks(max(n, m), d)
    out = rows.new_empty(m, d)
    if _on_numpy(rows):
        values, weights, target = rows.detach().numpy(), coefficients.detach().cpu().numpy(), out.numpy()
        buffer = np.empty((n, min(step, d)))
        for start in starts:
            width = min(step, d - start)
            chunk = buffer[:, :width]
            chunk[...] = values[:, start : start + width]
            target[:, start : start + width] = weights @ chunk
        return out
    coefficients = coefficients.to(device=rows.device, dtype=torch.float64)
    for start in starts:
        out[:, start : start + step] = coefficients @ rows[:, start : start + step].to(torch.float64)
    return out


def row_dots(rows: Tensor, vector: Tensor) -> tuple[Tensor, Tensor]:
    """``r_i . vector`` and ``||r_i||^2`` in float64, ``[n]`` each, a column chunk at a time."""
    n, d = rows.shape
    starts, step = column_chunks(n, d)
    if _on_numpy(rows):
        values, other = rows.detach().numpy(), vector.detach().to("cpu", torch.float64).numpy()
        dots, norms = np.zeros(n), np.zeros(n)
        buffer = np.empty((n, min(step, d)))
        for start in starts:
            width = min(step, d - start)
            chunk = buffer[:, :width]
            chunk[...] = values[:, start : start + width]
            dots += chunk @ other[start : start + width]
            norms += np.einsum("ij,ij->i", chunk, chunk)
        return torch.from_numpy(dots), torch.from_numpy(norms)
    vector = vector.to(device=rows.device, dtype=torch.float64)
    dots = torch.zeros(n, dtype=torch.float64, device=rows.device)
    norms = torch.zeros(n, dtype=torch.float64, device=rows.device)
    for start in starts:
        chunk = rows[:, start : start + step].to(torch.float64)
        dots += chunk @ vector[start : start + step]
        norms += chunk.square().sum(dim=1)
    return dots, norms
