import math

import pytest
import torch

from sim.server.centered_clipping import CenteredClipping
from sim.server.coordinatewise import Median, TrimmedMean
from sim.server.fedavg import FedAvg
from sim.server.base import AggregationContext
from sim.server.flame import Flame
from sim.server.fltrust import FLTrust
from sim.server.foolsgold import FoolsGold
from sim.server.fltk import FltkBulyan, FltkMultiKrum
from sim.server.krum import Bulyan, Krum, MultiKrum, default_f
from sim.server.prodigy import Prodigy
from sim.server.registry import AGGREGATORS, build_aggregator
from sim.server.norm_clipping import NormClipping
from sim.server.rfa import RFA
from sim.server.rlr import RLR
from sim.server.robust_dpfl import RobustDPFL
from sim.server.sparsefed import SparseFed
from sim.errors import ConfigError


def column(*values):
    """Updates with one coordinate: one row per value."""
    return torch.tensor(values, dtype=torch.float32)[:, None]


# Five one-coordinate updates; with f = 1 Krum sums the n - f - 2 = 2 nearest squared distances:
#   0:  to 2,3,7,20 -> 4, 9, 49, 400     -> 4 + 9   = 13
#   2:  to 0,3,7,20 -> 4, 1, 25, 324     -> 1 + 4   = 5   (lowest)
#   3:  to 0,2,7,20 -> 9, 1, 16, 289     -> 1 + 9   = 10
#   7:  to 0,2,3,20 -> 49, 25, 16, 169   -> 16 + 25 = 41
#   20: to 0,2,3,7  -> 400, 324, 289, 169 -> 169 + 289 = 458
KRUM_CASE = column(0, 2, 3, 7, 20)

# Ten one-coordinate updates, used for the compatibility rules. Squared distances to the 7
# nearest other rows, ascending:
#   0:  1, 9, 16, 64, 81, 225, 900    (7 nearest: 1296, 6 nearest: 396)
#   1:  1, 4, 9, 49, 64, 196, 841     (1164, 323)
#   3:  1, 4, 9, 25, 36, 144, 729     (948, 219)
#   4:  1, 9, 16, 16, 25, 121, 676    (864, 188)
#   8:  1, 16, 25, 49, 49, 64, 484    (688, 204)
#   9:  1, 25, 36, 36, 64, 81, 441    (684, 243)
#   15: 36, 49, 121, 144, 196, 225, 225 (996, 771)
#   30, 60, 100: every score in the thousands
FLTK_CASE = column(0, 1, 3, 4, 8, 9, 15, 30, 60, 100)


def test_fedavg_is_the_plain_mean():
    updates = torch.tensor([[1.0, -2.0], [3.0, 0.0], [8.0, 5.0]])
    result = FedAvg()(updates)
    # (1 + 3 + 8) / 3 = 4, (-2 + 0 + 5) / 3 = 1
    assert torch.allclose(result.update, torch.tensor([4.0, 1.0]))
    assert result.kept == [0, 1, 2]
    assert result.rejected_nonfinite == []


def test_fedavg_weights_rows():
    # (1*0 + 1*3 + 2*6) / (1 + 1 + 2) = 15 / 4 = 3.75
    result = FedAvg()(column(0, 3, 6), weights=[1.0, 1.0, 2.0])
    assert torch.allclose(result.update, torch.tensor([3.75]))


def test_fedavg_weights_of_rejected_rows_are_dropped():
    updates = column(0, math.nan, 6)
    # the NaN row and its weight 100 leave: (1*0 + 2*6) / 3 = 4
    result = FedAvg()(updates, weights=[1.0, 100.0, 2.0])
    assert torch.allclose(result.update, torch.tensor([4.0]))
    assert result.kept == [0, 2] and result.rejected_nonfinite == [1]


def test_fedavg_rejects_a_weight_per_row_mismatch():
    with pytest.raises(ValueError, match="one value per update row"):
        FedAvg()(column(0, 1), weights=[1.0])


def test_krum_picks_the_row_with_the_lowest_score():
    result = Krum(f=1)(KRUM_CASE)
    assert result.kept == [1]
    assert torch.equal(result.update, torch.tensor([2.0]))


def test_krum_sums_squared_distances_over_coordinates():
    # Rows on two coordinates, f = 0 -> n - 2 = 2 nearest:
    #   (0,0): to (3,4) 9+16=25, to (0,1) 0+1=1, to (5,5) 25+25=50 -> 1 + 25 = 26
    #   (3,4): to (0,0) 25, to (0,1) 9+9=18, to (5,5) 4+1=5       -> 5 + 18 = 23
    #   (0,1): to (0,0) 1, to (3,4) 18, to (5,5) 25+16=41          -> 1 + 18 = 19 (lowest)
    #   (5,5): to (0,0) 50, to (3,4) 5, to (0,1) 41                -> 5 + 41 = 46
    updates = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [5.0, 5.0]])
    result = Krum(f=0)(updates)
    assert result.kept == [2]


def test_multikrum_averages_the_n_minus_f_best_by_default():
    # Scores from KRUM_CASE: 13, 5, 10, 41, 458; m = n - f = 4 keeps rows 1, 2, 0, 3:
    # (0 + 2 + 3 + 7) / 4 = 3
    result = MultiKrum(f=1)(KRUM_CASE)
    assert result.kept == [0, 1, 2, 3]
    assert torch.allclose(result.update, torch.tensor([3.0]))


def test_multikrum_with_m_two_averages_the_two_best():
    # rows 1 (score 5) and 2 (score 10): (2 + 3) / 2 = 2.5
    result = MultiKrum(f=1, m=2)(KRUM_CASE)
    assert result.kept == [1, 2]
    assert torch.allclose(result.update, torch.tensor([2.5]))


def test_bulyan_selects_with_krum_then_averages_the_values_closest_to_the_median():
    # n = 7, f = 1: theta = n - 2f = 5 rows are selected, beta = theta - 2f = 3 kept per coordinate.
    updates = torch.tensor(
        [[1.0, 1.0], [-4.0, 4.0], [3.0, -1.0], [1.0, -3.0], [1.0, 3.0], [4.0, 4.0], [15.0, 12.0]]
    )
    # Selection, Krum over the remaining rows with n_remaining - f - 2 neighbours (at least 1):
    #   rows 0-6, 4 nearest: scores 46, 198, 62, 118, 60, 112, 1092 -> row 0
    #     (row 0: squared distances 34, 8, 16, 4, 18, 317 -> 4 + 8 + 16 + 18 = 46)
    #   rows 1-6, 3 nearest: 164, 54, 102, 56, 94, 775 -> row 2
    #   rows 1,3,4,5,6, 2 nearest: 90, 94, 36, 68, 462 -> row 4
    #   rows 1,3,5,6, 1 nearest: 64, 58, 58, 185 -> row 3 (tie with 5, lower row first)
    #   rows 1,5,6, 1 nearest: 64, 64, 185 -> row 1 (tie with 5)
    # The outlier (15, 12) and (4, 4) are left out; selection = rows 0, 1, 2, 3, 4.
    # Coordinate 0: 1, -4, 3, 1, 1 -> median 1; distances 0, 5, 2, 0, 0 -> keep 1, 1, 1 -> 1
    # Coordinate 1: 1, 4, -1, -3, 3 -> median 1; distances 0, 3, 2, 4, 2 -> keep 1, -1, 3 -> 1
    # (the plain median would give (1, 3) and the mean (3, 2.857))
    result = Bulyan(f=1)(updates)
    assert result.kept == [0, 1, 2, 3, 4]
    assert torch.allclose(result.update, torch.tensor([1.0, 1.0]))


def test_bulyan_with_f_zero_is_the_mean():
    # theta = beta = n: every row selected and every value kept
    result = Bulyan(f=0)(column(1, 2, 6))
    assert torch.allclose(result.update, torch.tensor([3.0]))


def test_median_odd_count_takes_the_middle_value_per_coordinate():
    updates = torch.tensor([[1.0, 9.0], [5.0, -1.0], [3.0, 4.0]])
    # coordinate 0: 1, 3, 5 -> 3; coordinate 1: -1, 4, 9 -> 4
    assert torch.equal(Median()(updates).update, torch.tensor([3.0, 4.0]))


def test_median_even_count_averages_the_two_middle_values():
    # 1, 2, 4, 10 -> (2 + 4) / 2 = 3 (torch.median would return the lower one, 2)
    result = Median()(column(1, 2, 10, 4))
    assert torch.equal(result.update, torch.tensor([3.0]))
    assert result.kept == [0, 1, 2, 3]


def test_trimmed_mean_drops_floor_beta_n_from_each_end():
    updates = torch.tensor([[1.0, 50.0], [2.0, -7.0], [3.0, 0.0], [4.0, 1.0], [100.0, 2.0]])
    # beta = 0.2, n = 5 -> drop 1 per end. coordinate 0: 2, 3, 4 -> 3; coordinate 1: -7, 0, 1, 2, 50
    # -> 0, 1, 2 -> 1
    result = TrimmedMean(beta=0.2)(updates)
    assert torch.allclose(result.update, torch.tensor([3.0, 1.0]))


def test_trimmed_mean_trims_nothing_when_beta_n_is_below_one():
    # beta = 0.1, n = 5 -> floor(0.5) = 0: the plain mean (1 + 2 + 3 + 4 + 100) / 5 = 22
    result = TrimmedMean(beta=0.1)(column(1, 2, 3, 4, 100))
    assert torch.allclose(result.update, torch.tensor([22.0]))


def test_trimmed_mean_rounds_beta_n_without_float_error():
    # 0.29 * 100 = 28.999999999999996 in floating point; the trim must still be 29 per end.
    # Values i^2 for i = 0..99 -> keep i = 29..70:
    # (sum_{i<=70} i^2 - sum_{i<=28} i^2) / 42 = (70*71*141/6 - 28*29*57/6) / 42 = (116795 - 7714) / 42
    result = TrimmedMean(beta=0.29)(column(*[i * i for i in range(100)]))
    assert torch.allclose(result.update, torch.tensor([109081 / 42]))


def test_sparsefed_clips_releases_top_k_and_carries_the_rest():
    sparsefed = SparseFed(k=0.5, clip=1.0)
    # Round 1: (3, 4, 0, 0) has norm 5 -> clipped to (0.6, 0.8, 0, 0); (0, 0, 0, 0.5) has norm 0.5.
    # mean = (0.3, 0.4, 0, 0.25); k = 0.5 * 4 = 2 -> release coordinates 1 and 0; 0.25 stays.
    first = sparsefed(torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]]))
    assert torch.allclose(first.update, torch.tensor([0.3, 0.4, 0.0, 0.0]))
    assert torch.allclose(sparsefed.error, torch.tensor([0.0, 0.0, 0.0, 0.25]))
    # Round 2: mean (0.1, 0, 0.2, 0) + carried (0, 0, 0, 0.25) = (0.1, 0, 0.2, 0.25)
    # -> release coordinates 3 and 2; 0.1 stays.
    second_round = torch.tensor([[0.1, 0.0, 0.2, 0.0], [0.1, 0.0, 0.2, 0.0]])
    second = sparsefed(second_round)
    assert torch.allclose(second.update, torch.tensor([0.0, 0.0, 0.2, 0.25]))
    assert torch.allclose(sparsefed.error, torch.tensor([0.1, 0.0, 0.0, 0.0]))
    # Without the carried 0.25 a fresh rule releases coordinates 2 and 0 instead.
    fresh = SparseFed(k=0.5, clip=1.0)(second_round)
    assert torch.allclose(fresh.update, torch.tensor([0.1, 0.0, 0.2, 0.0]))


def test_sparsefed_state_dict_restores_the_error_accumulator():
    first_round = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]])
    second_round = torch.tensor([[0.1, 0.0, 0.2, 0.0], [0.1, 0.0, 0.2, 0.0]])
    uninterrupted = SparseFed(k=2, clip=1.0)
    uninterrupted(first_round)
    saved = uninterrupted.state_dict()
    expected = uninterrupted(second_round).update

    resumed = SparseFed(k=2, clip=1.0)
    resumed.load_state_dict(saved)
    assert torch.allclose(resumed(second_round).update, expected)
    # the saved state is a copy: later rounds do not change it
    assert torch.allclose(saved["error"], torch.tensor([0.0, 0.0, 0.0, 0.25]))


def test_sparsefed_keep_count_reads_fractions_and_counts():
    assert SparseFed(k=0.1).keep_count(1000) == 100
    assert SparseFed(k=1).keep_count(7) == 7
    assert SparseFed(k=50).keep_count(1000) == 50
    assert SparseFed(k=5000).keep_count(1000) == 1000
    assert SparseFed(k=0.0001).keep_count(10) == 1


def test_fltk_multikrum_averages_five_of_seven_nearest_scores():
    # 7-nearest scores (FLTK_CASE): 9 -> 684, 8 -> 688, 4 -> 864, 3 -> 948, 15 -> 996 are the five
    # lowest: (9 + 8 + 4 + 3 + 15) / 5 = 39 / 5 = 7.8
    result = FltkMultiKrum()(FLTK_CASE)
    assert result.kept == [2, 3, 4, 5, 6]
    assert torch.allclose(result.update, torch.tensor([7.8]))


def test_fltk_bulyan_averages_ranks_two_to_four():
    # 6-nearest scores (FLTK_CASE): 4 -> 188, 8 -> 204, 3 -> 219, 9 -> 243, ...; ranks 2-4 skip
    # the best row (4): (8 + 3 + 9) / 3 = 20 / 3
    result = FltkBulyan()(FLTK_CASE)
    assert result.kept == [2, 4, 5]
    assert torch.allclose(result.update, torch.tensor([20.0 / 3.0]))


def test_compatibility_rules_differ_from_the_standard_rules():
    # Standard Multi-Krum with f = 3 for ten clients: 5 nearest, m = 7 -> rows 0..6:
    # (0 + 1 + 3 + 4 + 8 + 9 + 15) / 7 = 40 / 7, while fltk_multikrum gives 7.8.
    standard = MultiKrum(f=3)(FLTK_CASE)
    assert torch.allclose(standard.update, torch.tensor([40.0 / 7.0]))
    assert not torch.allclose(standard.update, FltkMultiKrum()(FLTK_CASE).update)
    # Krum's winner (row 3, value 4) is always in a Bulyan selection; fltk_bulyan drops it.
    krum_winner = Krum(f=3)(FLTK_CASE).kept[0]
    assert krum_winner == 3
    assert krum_winner in Bulyan(f=1)(FLTK_CASE).kept
    assert krum_winner not in FltkBulyan()(FLTK_CASE).kept
    assert abs(float(Bulyan(f=1)(FLTK_CASE).update) - 20.0 / 3.0) > 1.0


def standard_instances():
    return {
        "fedavg": FedAvg(),
        "krum": Krum(f=1),
        "multikrum": MultiKrum(f=1),
        "bulyan": Bulyan(f=1),
        "median": Median(),
        "trimmed_mean": TrimmedMean(beta=0.2),
        "sparsefed": SparseFed(k=0.5, clip=10.0),
        "fltk_multikrum": FltkMultiKrum(),
        "fltk_bulyan": FltkBulyan(),
        "robust_dpfl": RobustDPFL(),
        "norm_clipping": NormClipping(clip=2.0, noise_std=0.0),
        "rlr": RLR(threshold=2),
        "rfa": RFA(),
        "centered_clipping": CenteredClipping(tau=1.0),
        "prodigy": Prodigy(f=2),
        "flame": Flame(noise=0.0, cluster_on="update"),
        "foolsgold": FoolsGold(),
        # the server's own update: the all-ones direction, trusted by most rows of the cases here
        "fltrust": lambda updates: FLTrust()(updates, AggregationContext(reference_update=torch.ones(updates.shape[1]))),
    }


def test_every_registered_rule_is_covered():
    assert set(standard_instances()) == set(AGGREGATORS)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_nonfinite_rows_are_rejected_before_the_rule_runs(name):
    finite = torch.tensor(
        [[0.0, 1.0], [1.0, 0.5], [2.0, -1.0], [-1.0, 2.0], [0.5, 0.0], [3.0, 3.0], [-2.0, -2.0]]
    )
    poisoned = torch.cat([finite[:2], torch.tensor([[math.nan, 0.0]]), finite[2:5],
                          torch.tensor([[0.0, math.inf]]), finite[5:], torch.tensor([[-math.inf, 1.0]])])
    # finite rows sit at 0, 1, 3, 4, 5, 7, 8 of the poisoned input
    finite_positions = [0, 1, 3, 4, 5, 7, 8]
    clean = standard_instances()[name](finite)
    result = standard_instances()[name](poisoned)
    assert result.rejected_nonfinite == [2, 6, 9]
    assert torch.isfinite(result.update).all()
    assert torch.allclose(result.update, clean.update)
    assert result.kept == [finite_positions[i] for i in clean.kept]


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_all_rows_rejected_gives_a_zero_update(name):
    updates = torch.tensor([[math.nan, 1.0], [math.inf, 0.0]])
    result = standard_instances()[name](updates)
    assert torch.equal(result.update, torch.zeros(2))
    assert result.kept == [] and result.rejected_nonfinite == [0, 1]


def test_bulyan_still_answers_when_rejections_leave_fewer_than_4f_plus_3_rows():
    # f = 1 needs 7 rows; with 2 of 7 rejected the round uses f = 0 on the other 5 (their mean).
    updates = torch.cat([column(1, 2, 3, 4, 5), torch.tensor([[math.nan], [math.inf]])])
    result = Bulyan(f=1)(updates)
    assert result.rejected_nonfinite == [5, 6]
    assert torch.allclose(result.update, torch.tensor([3.0]))


def test_default_f_is_the_expected_malicious_count_rounded_up():
    assert default_f(10, 100, 25) == 3  # ceil(2.5)
    assert default_f(10, 100, 20) == 2  # exactly 2
    assert default_f(10, 100, 0) == 0


def test_build_refuses_bulyan_when_n_is_below_4f_plus_3():
    with pytest.raises(ConfigError) as error:
        build_aggregator({"aggregator": "bulyan", "f": 3}, 10, 100, 25)
    message = str(error.value)
    for part in ("server.f=3", "bulyan", "clients_per_round=10", "n >= 4f+3", "(10 < 15)", "at most 1"):
        assert part in message


def test_build_refuses_the_default_f_for_bulyan_and_says_where_it_came_from():
    with pytest.raises(ConfigError) as error:
        build_aggregator({"aggregator": "bulyan", "f": None}, 10, 100, 25)
    message = str(error.value)
    assert "server.f=3" in message and "ceil(10*25/100)" in message and "(10 < 15)" in message


def test_build_refuses_krum_when_n_is_below_2f_plus_3():
    with pytest.raises(ConfigError) as error:
        build_aggregator({"aggregator": "krum", "f": 4}, 10, 100, 25)
    message = str(error.value)
    for part in ("server.f=4", "krum", "n >= 2f+3", "(10 < 11)", "at most 3"):
        assert part in message
    with pytest.raises(ConfigError, match=r"multikrum.*\(10 < 11\)"):
        build_aggregator({"aggregator": "multikrum", "f": 4}, 10, 100, 25)


def test_build_resolves_the_default_configuration():
    class ServerSection:  # attribute access, as on the config dataclass
        aggregator = "multikrum"
        f = None
        m = None

    aggregator = build_aggregator(ServerSection(), 10, 100, 25)
    assert isinstance(aggregator, MultiKrum) and aggregator.f == 3 and aggregator.m is None
    assert isinstance(build_aggregator({"aggregator": "bulyan", "f": 1}, 10, 100, 25), Bulyan)
    trimmed = build_aggregator({"aggregator": "trimmed_mean", "trimmed_mean": {"beta": 0.2}}, 10, 100, 25)
    assert trimmed.beta == 0.2
    sparsefed = build_aggregator({"aggregator": "sparsefed", "sparsefed": {"k": 500, "clip": 2.0}}, 10, 100, 25)
    assert sparsefed.k == 500 and sparsefed.clip == 2.0
    assert isinstance(build_aggregator({"aggregator": "fltk_bulyan"}, 10, 100, 25), FltkBulyan)


@pytest.mark.parametrize(
    "server, field",
    [
        ({"aggregator": "mean"}, "server.aggregator='mean'"),
        ({"aggregator": "krum", "f": -1}, "server.f=-1"),
        ({"aggregator": "multikrum", "f": 1, "multikrum": {"m": 11}}, "server.multikrum.m=11"),
        ({"aggregator": "trimmed_mean", "trimmed_mean": {"beta": 0.5}}, "server.trimmed_mean.beta=0.5"),
        ({"aggregator": "sparsefed", "sparsefed": {"k": 2.5}}, "server.sparsefed.k=2.5"),
        ({"aggregator": "sparsefed", "sparsefed": {"k": 0}}, "server.sparsefed.k=0"),
        ({"aggregator": "sparsefed", "sparsefed": {"clip": 0.0}}, "server.sparsefed.clip=0.0"),
    ],
)
def test_build_names_the_bad_field_and_value(server, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(").replace(".", r"\.")):
        build_aggregator(server, 10, 100, 25)
