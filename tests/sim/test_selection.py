import pytest

from sim.errors import ConfigError
from sim.selection import Selector, malicious_set


def make_selector(schedule="random", seed=0, **overrides):
    settings = dict(num_clients=100, num_malicious=25, clients_per_round=10, schedule=schedule, seed=seed)
    settings.update(overrides)
    return Selector(**settings)


def test_malicious_set_has_the_requested_size_within_the_client_range():
    chosen = malicious_set(0, 100, 25)
    assert len(chosen) == 25 == len(set(chosen))
    assert chosen == sorted(chosen)
    assert all(0 <= c < 100 for c in chosen)
    assert malicious_set(3, 10, 0) == []
    assert malicious_set(3, 10, 10) == list(range(10))


def test_malicious_set_is_fixed_by_the_seed():
    assert malicious_set(7, 100, 25) == malicious_set(7, 100, 25)
    assert malicious_set(7, 100, 25) != malicious_set(8, 100, 25)


def test_malicious_set_rejects_more_malicious_than_clients():
    with pytest.raises(ConfigError, match=r"clients\.num_malicious=11"):
        malicious_set(0, 10, 11)


@pytest.mark.parametrize("schedule", ["random", "periodic", "fixed"])
def test_selection_is_a_pure_function_of_seed_and_round(schedule):
    first = make_selector(schedule, seed=4)
    # a second instance, queried in another order, gives the same lists
    second = make_selector(schedule, seed=4)
    later_rounds = [second.select(r) for r in reversed(range(30))][::-1]
    assert [first.select(r) for r in range(30)] == later_rounds
    assert first.select(12) == first.select(12)


def test_different_seeds_select_differently():
    a, b = make_selector(seed=0), make_selector(seed=1)
    assert [a.select(r) for r in range(10)] != [b.select(r) for r in range(10)]


def test_random_selects_distinct_clients_and_the_malicious_count_varies():
    selector = make_selector("random")
    counts = set()
    for round in range(60):
        clients = selector.select(round)
        assert len(clients) == 10 == len(set(clients))
        assert all(0 <= c < 100 for c in clients)
        assert clients == sorted(clients)
        counts.add(selector.malicious_count(round))
    # 25% malicious, 10 per round: over 60 rounds at least three different counts appear
    assert len(counts) >= 3


def test_periodic_bursts_in_the_first_rounds_of_each_cycle():
    selector = make_selector("periodic", period=10, burst_rounds=2, burst_malicious=6)
    counts = [selector.malicious_count(r) for r in range(30)]
    expected = ([6, 6] + [0] * 8) * 3
    assert counts == expected
    assert all(len(selector.select(r)) == 10 for r in range(30))


def test_fixed_selects_the_same_malicious_count_every_round():
    selector = make_selector("fixed", fixed_malicious=2)
    assert [selector.malicious_count(r) for r in range(20)] == [2] * 20
    # which malicious clients are chosen still changes between rounds
    assert len({tuple(selector.select(r)) for r in range(20)}) > 1


def test_schedule_repeats_the_explicit_counts_cyclically():
    selector = make_selector("schedule", malicious_counts=[0, 3, 5])
    assert [selector.malicious_count(r) for r in range(7)] == [0, 3, 5, 0, 3, 5, 0]


def test_selected_malicious_clients_come_from_the_malicious_set():
    selector = make_selector("fixed", fixed_malicious=4, seed=9)
    malicious = set(malicious_set(9, 100, 25))
    assert set(selector.malicious) == malicious
    for round in range(10):
        assert sum(c in malicious for c in selector.select(round)) == 4


def test_from_config_reads_the_sections():
    config = {
        "seed": 2,
        "clients": {"num_clients": 20, "num_malicious": 5, "clients_per_round": 4},
        "selection": {"schedule": "fixed", "fixed_malicious": 1, "malicious_counts": []},
    }
    selector = Selector.from_config(config)
    assert selector.select(3) == make_selector("fixed", seed=2, num_clients=20, num_malicious=5,
                                               clients_per_round=4, fixed_malicious=1).select(3)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"schedule": "periodic", "burst_malicious": 11}, "selection.burst_malicious=11"),
        ({"schedule": "periodic", "burst_rounds": 11}, "selection.burst_rounds=11"),
        ({"schedule": "periodic", "period": 0}, "selection.period=0"),
        ({"schedule": "fixed", "fixed_malicious": 26, "clients_per_round": 30}, "selection.fixed_malicious=26"),
        ({"schedule": "fixed", "fixed_malicious": -1}, "selection.fixed_malicious=-1"),
        ({"schedule": "schedule", "malicious_counts": []}, r"selection.malicious_counts=\[\]"),
        ({"schedule": "schedule", "malicious_counts": [1, 12]}, r"selection.malicious_counts\[1\]=12"),
        ({"schedule": "sometimes"}, "selection.schedule='sometimes'"),
        ({"clients_per_round": 101}, "clients.clients_per_round=101"),
    ],
)
def test_impossible_settings_are_refused_with_the_field_and_value(overrides, field):
    with pytest.raises(ConfigError, match=field):
        make_selector(**overrides)


def test_a_round_needing_more_benign_clients_than_exist_is_refused():
    # 12 clients, 8 malicious: only 4 benign, so a round of 10 needs at least 6 malicious.
    with pytest.raises(ConfigError, match=r"selection.fixed_malicious=2.*6 to 8 malicious"):
        Selector(12, 8, 10, "fixed", fixed_malicious=2)
    assert Selector(12, 8, 10, "fixed", fixed_malicious=6).malicious_count(0) == 6


def test_negative_round_is_refused():
    with pytest.raises(ValueError, match="round"):
        make_selector().select(-1)
