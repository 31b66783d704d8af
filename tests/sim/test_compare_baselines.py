"""Main-accuracy loss of attacked variants against the clean run on the same selections."""

from __future__ import annotations

import pytest

import json


from sim.compare import clean_baselines, compare, main_accuracy_loss, table_markdown
from sim.config import apply_overrides, load_config

pytestmark = pytest.mark.usefixtures("one_thread")




def test_each_attacked_variant_is_matched_with_the_clean_run_that_differs_only_in_the_attack():
    base = load_config(overrides=["attack.type=none"])
    configs = {
        "clean median": apply_overrides(base, ["server.aggregator=median"]),
        "clean fedavg": apply_overrides(base, ["server.aggregator=fedavg"]),
        "poisonedfl median": apply_overrides(base, ["server.aggregator=median", "model_poisoning.type=poisonedfl"]),
        "noisy poisonedfl fedavg": apply_overrides(
            base, ["server.aggregator=fedavg", "model_poisoning.type=poisonedfl", "model_poisoning.poisonedfl.noise=0.5"]
        ),
        "backdoor median": apply_overrides(base, ["server.aggregator=median", "attack.type=backdoor"]),
        "lie krum": apply_overrides(base, ["server.aggregator=krum", "server.f=1", "model_poisoning.type=lie"]),
    }
    assert clean_baselines(configs) == {
        "poisonedfl median": "clean median",
        "noisy poisonedfl fedavg": "clean fedavg",
        "backdoor median": "clean median",
        "lie krum": None,  # no clean Krum run to compare with
    }


def test_loss_column_appears_only_when_a_variant_has_a_clean_run():
    summaries = {
        "clean": {"final_main_accuracy": 85.0, "mean_backdoor_accuracy": 5.0, "final_backdoor_accuracy": 4.0},
        "attacked": {"final_main_accuracy": 60.5, "mean_backdoor_accuracy": 6.0, "final_backdoor_accuracy": 7.0},
    }
    assert main_accuracy_loss(summaries["attacked"], summaries["clean"]) == 24.5
    table = table_markdown(summaries, baselines={"attacked": "clean"})
    assert "main accuracy loss vs clean run (points)" in table
    assert "| attacked | 60.5 | 6.0 | 7.0 | 24.5 (vs clean) |" in table
    assert "| clean | 85.0 | 5.0 | 4.0 | n/a |" in table
    assert "loss" not in table_markdown(summaries)


def test_compare_end_to_end_writes_the_loss_into_the_table_and_json(tmp_path):
    cfg = load_config(overrides=[
        "data.dataset=synthetic", "data.synthetic_train_size=200", "data.synthetic_test_size=50", "model=mlp",
        "clients.num_clients=6", "clients.num_malicious=2", "clients.clients_per_round=4",
        "selection.schedule=fixed", "selection.fixed_malicious=1", "training.local_steps=2",
        "attack.type=none", "server.aggregator=fedavg", "rounds=2",
    ])
    variants = {"clean": [], "PoisonedFL": ["model_poisoning.type=poisonedfl"]}
    comparison = compare(cfg, variants, tmp_path / "cmp", progress=False, echo=lambda text: None)
    entry = comparison["variants"]["PoisonedFL"]
    assert entry["clean_baseline"] == "clean"
    clean_final = comparison["variants"]["clean"]["summary"]["final_main_accuracy"]
    assert entry["main_accuracy_loss"] == clean_final - entry["summary"]["final_main_accuracy"]
    assert "clean_baseline" not in comparison["variants"]["clean"]
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["variants"]["PoisonedFL"]["clean_baseline"] == "clean"
    assert "(vs clean)" in (tmp_path / "cmp" / "table.md").read_text()
    assert "model poisoning" not in comparison["caption"]  # the base config itself is clean
