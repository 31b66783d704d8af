"""The scalable aggregation paths against plain references on random inputs, and huge finite
updates that must not overflow.

The references are the direct definitions: distances as summed squared differences in float64,
Krum scores as a top-k per row, Bulyan's Krum picks recomputed on the remaining rows, the median
and the trimmed mean from fully sorted columns, Bulyan's closest values from a stable sort.
"""
import math

import pytest
import torch

from sim.server import aggregate
from sim.server.coordinatewise import Median, TrimmedMean
from sim.server.fedavg import FedAvg
from sim.server.fltk import FltkBulyan, FltkMultiKrum
from sim.server.krum import Bulyan, Krum, MultiKrum
from sim.server.sparsefed import SparseFed

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def exact_distances(rows):
    rows = rows.double()
    return torch.stack([(rows - row).square().sum(dim=1) for row in rows])


def krum_scores(distances, neighbours):
    n = distances.shape[0]
    if n == 1:
        return distances.new_zeros(1)
    masked = distances.masked_fill(torch.eye(n, dtype=torch.bool, device=distances.device), math.inf)
    return torch.topk(masked, neighbours, dim=1, largest=False).values.sum(dim=1)


def lowest(scores, count):
    return torch.sort(scores, stable=True).indices[:count].tolist()


def reference_bulyan_selection(rows, f):
    n = rows.shape[0]
    f = min(f, max(0, (n - 3) // 4))
    distances = exact_distances(rows)
    remaining, selected = list(range(n)), []
    for _ in range(n - 2 * f):
        index = torch.tensor(remaining, device=rows.device)
        m = len(remaining)
        scores = krum_scores(distances[index][:, index], min(m - 1, max(1, m - f - 2)))
        winner = remaining[lowest(scores, 1)[0]]
        selected.append(winner)
        remaining.remove(winner)
    return selected


def reference_closest_to_median(selection, count):
    ordered = selection.sort(dim=0).values
    n = selection.shape[0]
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    closest = torch.sort((selection - median).abs(), dim=0, stable=True).indices[:count]
    return selection.gather(0, closest).double().mean(dim=0)


def random_updates(n, d, seed, device, duplicates=0):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, d, generator=generator) * torch.rand(n, 1, generator=generator) * 3
    rows += torch.randn(d, generator=generator)  # a shared offset, as for updates from one model
    for k in range(duplicates):  # identical rows, as colluding clients send
        rows[n - 1 - k] = rows[1]
    return rows.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_distances_match_exact_differences(device, seed):
    rows = random_updates(23, 517 + seed, seed, device, duplicates=3)
    fast = aggregate.pairwise_squared_distances(rows)
    exact = exact_distances(rows)
    assert fast.dtype == torch.float64
    assert torch.allclose(fast, exact, rtol=1e-10, atol=1e-10 * float(exact.max()))
    assert torch.equal(fast, fast.T)
    assert (fast.diagonal() == 0).all()
    # the identical rows 1, 20, 21, 22: distance exactly 0, and exactly equal rows of the matrix
    for k in (20, 21, 22):
        assert fast[1, k] == 0
        assert torch.equal(fast[k, [0, 2, 3]], fast[1, [0, 2, 3]])


def test_distances_keep_digits_under_a_large_common_offset():
    generator = torch.Generator().manual_seed(5)
    rows = 1000.0 + torch.randn(12, 300, generator=generator) * 1e-3
    exact = exact_distances(rows)
    assert torch.allclose(aggregate.pairwise_squared_distances(rows), exact, rtol=1e-9)


def test_distances_in_column_chunks(monkeypatch):
    rows = random_updates(9, 1001, 3, "cpu", duplicates=2)
    whole = aggregate.pairwise_squared_distances(rows)
    monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", 9 * 64)  # 64 columns per chunk
    chunked = aggregate.pairwise_squared_distances(rows)
    assert torch.allclose(chunked, whole, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
def test_krum_rules_pick_what_exact_distances_pick(device, seed):
    n = 11 + 2 * seed
    rows = random_updates(n, 301, seed, device, duplicates=seed % 3)
    exact = exact_distances(rows)
    f = (n - 3) // 4
    neighbours = min(n - 1, max(1, n - f - 2))
    assert Krum(f)(rows).kept == lowest(krum_scores(exact, neighbours), 1)
    chosen = lowest(krum_scores(exact, neighbours), n - f)
    result = MultiKrum(f)(rows)
    assert result.kept == sorted(chosen)
    assert torch.allclose(result.update.double(), rows[chosen].double().mean(dim=0), atol=1e-5)
    assert FltkMultiKrum()(rows).kept == sorted(lowest(krum_scores(exact, 7), 5))
    assert FltkBulyan()(rows).kept == sorted(lowest(krum_scores(exact, 6), n)[1:4])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
def test_bulyan_matches_the_pick_by_pick_reference(device, seed):
    n = 7 + 4 * seed
    f = (n - 3) // 4
    rows = random_updates(n, 257, 10 + seed, device, duplicates=seed % 4)
    selected = reference_bulyan_selection(rows, f)
    result = Bulyan(f)(rows)
    assert result.kept == sorted(selected)
    expected = reference_closest_to_median(rows[selected], len(selected) - 2 * f)
    assert torch.allclose(result.update.double(), expected, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_closest_to_median_keeps_the_stable_tie_rule(seed):
    # Small integers: many values equally far above and below the median, and sums that are exact,
    # so the result must equal the stable-sort reference exactly.
    generator = torch.Generator().manual_seed(seed)
    for n, count in ((9, 5), (10, 4), (7, 1), (6, 6)):
        selection = torch.randint(-3, 4, (n, 400), generator=generator).float()
        fast = aggregate.mean_closest_to_median(selection, count)
        assert torch.equal(fast, reference_closest_to_median(selection, count).float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 10, 31])
def test_median_and_trimmed_mean_match_sorted_columns(device, dtype, n):
    rows = random_updates(n, 999, n, device).to(dtype)
    rows[:, :50] = rows[:, :50].round()  # ties
    ordered = rows.sort(dim=0).values
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    assert torch.equal(Median()(rows).update, median)
    for beta in (0.0, 0.1, 0.25, 0.45):
        trimmed = math.floor(beta * n + 1e-9)
        expected = ordered[trimmed : n - trimmed].double().mean(dim=0)
        result = TrimmedMean(beta)(rows).update
        assert result.dtype == dtype and result.device.type == device
        assert torch.allclose(result.double(), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# huge finite updates


HUGE = 3e38  # float32's largest finite value is about 3.4e38


def test_fedavg_of_huge_rows_does_not_overflow():
    rows = torch.full((3, 4), HUGE)
    rows[1, 1] = -HUGE
    update = FedAvg()(rows).update
    assert torch.isfinite(update).all()
    assert torch.allclose(update.double(), rows.double().mean(dim=0), rtol=1e-6)
    weighted = FedAvg()(rows, weights=[600.0, 600.0, 1200.0]).update
    assert torch.isfinite(weighted).all()
    assert torch.allclose(weighted.double(), torch.tensor([0.25, 0.25, 0.5]).double() @ rows.double(), rtol=1e-6)


def test_mean_rules_of_huge_rows_stay_finite():
    rows = torch.full((7, 3), HUGE)
    for rule in (MultiKrum(1), TrimmedMean(0.2), Bulyan(1), FltkMultiKrum(), FltkBulyan()):
        update = rule(rows).update
        assert torch.isfinite(update).all(), rule
        assert torch.allclose(update.double(), torch.full((3,), HUGE, dtype=torch.float64), rtol=1e-6), rule


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_median_midpoint_of_huge_values_does_not_overflow(dtype):
    huge = torch.finfo(dtype).max * 0.9
    rows = torch.tensor([[huge, -huge, 1.0], [huge, huge, 3.0]], dtype=dtype)
    update = Median()(rows).update
    assert torch.isfinite(update).all()
    assert torch.allclose(update.double(), torch.tensor([huge, 0.0, 2.0], dtype=torch.float64), rtol=1e-6)


def test_sparsefed_without_clip_keeps_its_error_memory_finite():
    rule = SparseFed(k=0.34, clip=None)  # releases one of the three coordinates a round
    rows = torch.tensor([[HUGE, HUGE, 1.0]] * 3)
    first = rule(rows)
    assert torch.isfinite(first.update).all() and torch.isfinite(rule.error).all()
    assert float(rule.error.abs().max()) == pytest.approx(HUGE, rel=1e-6)
    second = rule(rows)  # the unreleased HUGE plus another HUGE: beyond float32, saturates
    assert torch.isfinite(second.update).all() and torch.isfinite(rule.error).all()
    assert float(second.update.abs().max()) == torch.finfo(torch.float32).max


def test_coordinate_rules_in_column_chunks(monkeypatch):
    rows = random_updates(13, 1003, 7, "cpu", duplicates=2)
    rows[:, :100] = rows[:, :100].round()
    rules = {"median": Median(), "trimmed": TrimmedMean(0.2), "bulyan": Bulyan(2)}
    whole = {name: rule(rows) for name, rule in rules.items()}
    monkeypatch.setattr(aggregate, "COORDINATE_CHUNK_ELEMENTS", 13 * 50)  # 50 columns per chunk
    for name, rule in rules.items():
        chunked = rule(rows)
        assert chunked.kept == whole[name].kept
        # the same values; a mean over 50 columns may add them in another order than over 1003
        assert torch.allclose(chunked.update, whole[name].update, rtol=1e-6, atol=1e-7), name


def two_means_by_loop(scores):
    values = scores.double()
    n = values.shape[0]
    if n < 2 or bool((values == values[0]).all()):
        return list(range(n))
    order = torch.sort(values, stable=True).indices
    ordered = values[order]
    best_split, best_cost = 1, math.inf
    for split in range(1, n):
        low, high = ordered[:split], ordered[split:]
        cost = float(((low - low.mean()) ** 2).sum() + ((high - high.mean()) ** 2).sum())
        if cost < best_cost:
            best_split, best_cost = split, cost
    return sorted(order[:best_split].tolist())


@pytest.mark.parametrize("seed", range(20))
def test_two_means_split_matches_the_split_by_split_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 300, (1,), generator=generator))
    scores = torch.rand(n, generator=generator, dtype=torch.float64)
    scores[: n // 5] += 3 * float(torch.rand(1, generator=generator))  # a group of high scores
    assert aggregate.two_means_low_cluster(scores) == two_means_by_loop(scores)
