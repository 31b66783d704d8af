"""ProDiGy: worked by hand, against a loop-by-loop transcription of its definition, and its settings."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sim.config import load_config
from sim.errors import ConfigError
from sim.server.prodigy import Prodigy
from sim.server.registry import build_aggregator


# ----------------------------------------------------------------------------------------------
# The oracle: /work/shared/reference/prodigy.md step by step, plain loops over numpy, plus the edge
# cases this project decided (docs/algorithms.md §3.5): 0/0 -> 0, x/0 -> inf, infinite scores
# share the weight equally, all scores 0 -> a zero update.


def oracle_distances(g):
    n = len(g)
    return [[float(np.linalg.norm(g[i] - g[j]) ** 2) for j in range(n)] for i in range(n)]


def oracle_sorted_others(distances, i):
    others = [j for j in range(len(distances)) if j != i]
    return sorted(others, key=lambda j: distances[i][j])  # Python's sort is stable


def ratio(top, bottom):
    if top == 0:
        return 0.0
    return top / bottom if bottom != 0 else float("inf")


def oracle_nnm(g, f):
    n = len(g)
    distances = oracle_distances(g)
    mixed = np.zeros_like(g)
    for i in range(n):
        group = oracle_sorted_others(distances, i)[: n - f - 1] + [i]
        # In row order, unlike the authors' code (nearest first): rows mixing the same set are
        # then equal to the bit, as they are in exact arithmetic, and tie exactly in the scores.
        mixed[i] = np.mean(g[sorted(group)], axis=0)
    return mixed


def oracle_prodigy(g, f):
    """The aggregate and the rows with non-zero weight."""
    n = len(g)
    k = f - 1
    distances = oracle_distances(g)
    scores = []
    for i in range(n):
        group = oracle_sorted_others(distances, i)[:k] + [i]
        mean = np.mean(g[group], axis=0)
        std = np.var(g[group], axis=0) ** 0.5
        if np.all(g[group] == g[group][0]):
            std = np.zeros_like(std)  # numpy's var of equal values can be 1e-16, not 0
        s1 = ratio(float(np.linalg.norm(std)), float(np.linalg.norm(mean)))
        errors = sorted(distances[i][j] for j in range(n) if j != i)
        s2 = sum(errors[k : n - f - 1])
        scores.append(ratio(s1, s2))
    lowest = sorted(scores)[:f]
    scores = [0.0 if s in lowest else s for s in scores]
    result = np.zeros(g.shape[1])
    if any(s == float("inf") for s in scores):
        winners = [i for i in range(n) if scores[i] == float("inf")]
        for i in winners:
            result = result + g[i] / len(winners)
        return result, winners
    total = sum(scores)
    if total == 0:
        return result, []
    for i in range(n):
        result = result + (scores[i] / total) * g[i]
    return result, [i for i in range(n) if scores[i] > 0]


def close(update, expected, g):
    # Distances come from a float64 Gram matrix (as for Krum): a distance between rows far closer
    # to each other than to the rows' mean carries an error of about 1e-16 * |row - mean|^2, so
    # a score, and the update, agree to about 1e-7, far below float32 rounding of the updates.
    return np.allclose(update, expected, rtol=1e-6, atol=1e-9 * np.abs(g).max())


def ours(g, f, nnm=False):
    result = Prodigy(f, nnm=nnm)(torch.from_numpy(g))
    return result.update.numpy(), result.kept


# ----------------------------------------------------------------------------------------------
# worked by hand


def test_prodigy_weights_the_survivors_by_dissimilarity_over_proximity():
    # One coordinate, f = 2 (neighbourhoods of 2 rows, k = 1), s2 = the 2nd smallest distance.
    #   row  value  nearest  S       mean   std   s1      sorted distances        s2     s
    #   0    1      1 (1)    {1,2}   1.5    0.5   1/3     1, 9, 81, 90.25         9      1/27
    #   1    2      0 (1)    {2,1}   1.5    0.5   1/3     1, 4, 64, 72.25         4      1/12
    #   2    4      1 (4)    {4,2}   3      1     1/3     4, 9, 36, 42.25         9      1/27
    #   3    10     4 (.25)  {10,10.5} 10.25 0.25 1/41    0.25, 36, 64, 81        36     1/1476
    #   4    10.5   3 (.25)  same    10.25  0.25  1/41    0.25, 42.25, 72.25, 90.25 42.25 1/1732.25
    # The two lowest (rows 3, 4) get 0. Weights 1/27 : 1/12 : 1/27 = 4 : 9 : 4 (of 17).
    # Update = (4*1 + 9*2 + 4*4) / 17 = 38/17.
    g = np.array([[1.0], [2.0], [4.0], [10.0], [10.5]])
    update, kept = ours(g, 2)
    assert kept == [0, 1, 2]
    assert update[0] == pytest.approx(38 / 17, rel=1e-12)


def test_prodigy_zeroes_every_row_tied_with_the_f_lowest_scores():
    # Three equal rows (5) and rows 1, 2; f = 2. An equal row's neighbourhood is two equal rows
    # (std 0): s1 = 0 and its s2 (2nd smallest of 0, 0, 9, 16) is 0 -> 0/0 = 0 by decision.
    # All three scores equal the lowest value 0, so all three are zeroed, more than f.
    # Row "1": S = {1, 2}, s1 = 0.5/1.5 = 1/3, distances 1, 16, 16, 16 -> s2 = 16, s = 1/48.
    # Row "2": S = {2, 1}, s1 = 1/3,           distances 1, 9, 9, 9   -> s2 = 9,  s = 1/27.
    # Weights 1/48 : 1/27 = 27 : 48 -> update = (27*1 + 48*2) / 75 = 1.64.
    g = np.array([[5.0], [5.0], [1.0], [5.0], [2.0]])
    update, kept = ours(g, 2)
    assert kept == [2, 4]
    assert update[0] == pytest.approx(1.64, rel=1e-12)


def test_prodigy_with_every_score_zero_takes_no_step():
    g = np.array([[3.0, -1.0]] * 5)
    update, kept = ours(g, 2)
    assert kept == [] and np.all(update == 0)


def test_prodigy_with_a_zero_mean_neighbourhood_gives_that_row_all_the_weight():
    # f = 2: row 0 (1) and row 1 (-1) are each other's nearest (distance 4, the others are
    # farther): mean 0, std 1 -> s1 = inf for both, and they share the weight: update 0.
    # (f lowest: rows 2, 3, 4 form a tight group, s1 small.)
    g = np.array([[1.0], [-1.0], [10.0], [10.1], [10.2]])
    update, kept = ours(g, 2)
    assert kept == [0, 1] and update[0] == 0


def test_prodigy_with_too_few_finite_rows_takes_no_step():
    # f = 2 needs 5 rows; two of six are NaN, so the round's f is min(2, (4 - 1) // 2) = 1 < 2.
    g = torch.tensor([[1.0], [float("nan")], [2.0], [3.0], [float("inf")], [4.0]])
    result = Prodigy(2)(g)
    assert result.rejected_nonfinite == [1, 4] and result.kept == [] and float(result.update[0]) == 0


def test_prodigy_lowers_f_when_rejected_rows_leave_fewer_than_2f_plus_1():
    g = np.random.default_rng(3).normal(size=(7, 4))
    with_nan = np.vstack([g, np.full((1, 4), np.nan)])
    # 8 rows with f = 3 is fine; one NaN leaves 7 = 2*3 + 1, still f = 3.
    expected, kept = oracle_prodigy(g, 3)
    result = Prodigy(3)(torch.from_numpy(with_nan))
    assert result.kept == kept and np.allclose(result.update.numpy(), expected, rtol=1e-9, atol=1e-12)
    # Two NaN rows out of 8 with f = 3: 6 rows, f lowered to 2.
    g6 = g[:6]
    expected, kept = oracle_prodigy(g6, 2)
    result = Prodigy(3)(torch.from_numpy(np.vstack([g6, np.full((2, 4), np.nan)])))
    assert result.kept == kept and np.allclose(result.update.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_nnm_mixes_each_row_with_its_n_minus_f_minus_1_nearest():
    # n = 5, f = 2: each row averaged with itself and its n - f - 1 = 2 nearest others.
    #   row 0 (0):  to 1, 2, 3, 4 = 1, 9, 1, 400   -> rows 1, 3  -> (0 + 1 - 1) / 3 = 0
    #   row 1 (1):  to 0, 2, 3, 4 = 1, 4, 4, 361   -> 0, then 2 (tied with 3: lower index) -> (1 + 0 + 3) / 3
    #   row 2 (3):  to 0, 1, 3, 4 = 9, 4, 16, 289  -> 1, 0  -> (3 + 1 + 0) / 3 = 4/3
    #   row 3 (-1): to 0, 1, 2, 4 = 1, 4, 16, 441  -> 0, 1  -> (-1 + 0 + 1) / 3 = 0
    #   row 4 (20): to 0, 1, 2, 3 = 400, 361, 289, 441 -> 2, 1 -> (20 + 3 + 1) / 3 = 8
    g = np.array([[0.0], [1.0], [3.0], [-1.0], [20.0]])
    from sim.server.prodigy import mix, nnm_weights
    from sim.server.aggregate import pairwise_squared_distances

    rows = torch.from_numpy(g)
    mixed = mix(rows, nnm_weights(pairwise_squared_distances(rows), 2)).numpy()
    assert mixed[:, 0] == pytest.approx([0.0, 4 / 3, 4 / 3, 0.0, 8.0])
    assert np.allclose(mixed, oracle_nnm(g, 2))


# ----------------------------------------------------------------------------------------------
# against the oracle


def random_case(rng):
    n = int(rng.integers(5, 16))
    f = int(rng.integers(2, (n - 1) // 2 + 1))
    d = int(rng.integers(1, 9))
    g = rng.normal(size=(n, d)) * rng.choice([1e-3, 1.0, 50.0])
    if rng.random() < 0.5:  # a tight colluding group of up to f rows, somewhere else
        group = rng.choice(n, size=int(rng.integers(1, f + 1)), replace=False)
        g[group] = rng.normal(size=d) * 3 + rng.normal(size=(len(group), d)) * 1e-2
    return g, f


def test_prodigy_matches_the_oracle_on_random_cases():
    rng = np.random.default_rng(0)
    for case in range(600):
        g, f = random_case(rng)
        expected, expected_kept = oracle_prodigy(g, f)
        update, kept = ours(g, f)
        assert kept == expected_kept, (case, g, f)
        assert close(update, expected, g), case


def tied_case(rng):
    """Small whole numbers and copied rows: exact ties among distances and scores.

    The distance matrix is a Gram product on rows centred by their float32 mean; it is exact
    (so equal distances are equal to the bit, as in the oracle) when the centred values need few
    bits: whole numbers and n = 8 or 16 rows. f is 2 or 4, so every mean and deviation within a
    neighbourhood is exact in binary and equal neighbourhoods give bit-equal scores."""
    f = int(rng.choice([2, 4]))
    n = 16 if f == 4 else int(rng.choice([8, 16]))
    d = int(rng.integers(1, 4))
    g = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    for _ in range(int(rng.integers(0, 3))):
        g[rng.integers(n)] = g[rng.integers(n)]
    return g, f


def test_prodigy_matches_the_oracle_on_exact_ties():
    rng = np.random.default_rng(1)
    zeroed_more_than_f = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for case in range(600):
            g, f = tied_case(rng)
            expected, expected_kept = oracle_prodigy(g.astype(np.float64), f)
            update, kept = ours(g, f)
            assert kept == expected_kept, (case, g.tolist(), f)
            assert close(update, expected, g), case
            zeroed_more_than_f += expected_kept != [] and len(g) - len(expected_kept) > f
    assert zeroed_more_than_f > 20  # the cases do exercise ties at the cut


def test_prodigy_with_nnm_matches_the_oracle():
    rng = np.random.default_rng(2)
    for case in range(300):
        g, f = random_case(rng)
        expected, expected_kept = oracle_prodigy(oracle_nnm(g, f), f)
        update, kept = ours(g, f, nnm=True)
        assert kept == expected_kept, case
        assert close(update, expected, g), case


def test_prodigy_runs_in_float32_close_to_the_float64_oracle():
    rng = np.random.default_rng(4)
    for _ in range(50):
        g, f = random_case(rng)
        g = g.astype(np.float32)
        expected, expected_kept = oracle_prodigy(g.astype(np.float64), f)
        result = Prodigy(f)(torch.from_numpy(g))
        assert result.update.dtype == torch.float32
        assert result.kept == expected_kept
        assert np.allclose(result.update.numpy(), expected, rtol=1e-4, atol=1e-6 * np.abs(g).max())


# ----------------------------------------------------------------------------------------------
# settings


def test_prodigy_is_built_from_the_config_with_server_f():
    rule = build_aggregator(SimpleNamespace(aggregator="prodigy", f=2, prodigy={"nnm": True}), 10, 100, 25)
    assert isinstance(rule, Prodigy) and rule.f == 2 and rule.nnm is True
    cfg = load_config(overrides=["server.aggregator=prodigy", "server.prodigy.nnm=true"])
    assert cfg.server.prodigy.nnm is True


@pytest.mark.parametrize("f", [0, 1, 5, -1, "2", 2.0, True])
def test_prodigy_refuses_an_f_it_cannot_use(f):
    # 10 clients per round: f must be in [2, 4].
    with pytest.raises(ConfigError) as caught:
        build_aggregator(SimpleNamespace(aggregator="prodigy", f=f), 10, 100, 25)
    message = str(caught.value)
    assert "server.f=" in message and "prodigy" in message and "fix: --set server.f=" in message


def test_prodigy_refuses_a_default_f_below_two_and_says_where_it_came_from():
    # ceil(10 * 5 / 100) = 1
    with pytest.raises(ConfigError, match=r"server.f=1 \(server.f=null resolves.*fix: --set server.f=2"):
        build_aggregator(SimpleNamespace(aggregator="prodigy", f=None), 10, 100, 5)


def test_prodigy_refuses_too_few_clients_per_round_for_any_f():
    with pytest.raises(ConfigError, match="clients_per_round=4.*fix: --set clients.clients_per_round=5"):
        build_aggregator(SimpleNamespace(aggregator="prodigy", f=2), 4, 100, 25)


@pytest.mark.parametrize("value", ["3", "maybe"])
def test_prodigy_refuses_a_non_boolean_nnm(value):
    with pytest.raises(ConfigError, match="server.prodigy.nnm"):
        load_config(overrides=["server.aggregator=prodigy", f"server.prodigy.nnm={value}"])
