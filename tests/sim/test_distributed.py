"""Several ranks share a round (torchrun, gloo on CPU) and produce one process's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from sim.state import read_checkpoint
from sim import io, reporting, runner
from sim.engines import distributed
from sim.config import load_config
from sim.errors import ConfigError
from simtest import metrics_without_timing, run_on_two_gloo_ranks

REPO = Path(__file__).resolve().parents[2]

# Five clients a round over two ranks: shares of 3 and 2, malicious clients on both.
TINY = {
    "seed": 0,
    "rounds": 3,
    "data": {"dataset": "synthetic", "synthetic_train_size": 240, "synthetic_test_size": 60, "partition": "iid"},
    "model": "mlp",
    "clients": {"num_clients": 8, "num_malicious": 2, "clients_per_round": 5},
    "selection": {"schedule": "fixed", "fixed_malicious": 2},
    "training": {"lr": 0.1, "batch_size": 16, "local_epochs": 1},
    "attack": {"type": "backdoor"},
    "client_defense": {"type": "flwbc"},
    # Median: an order statistic, so every rank needs every update.
    "server": {"aggregator": "median"},
    # The shadow run trains every selected client a second time, split over the ranks too.
    "metrics": {"attack_effect": True},
}


# `original` with momentum_reset=never: each client's momentum is carried across rounds, and
# clients change ranks between rounds (the selection changes), so the ranks must share it.
CARRIED_MOMENTUM = {"client_defense": {"type": "leadfl", "variant": "original", "momentum_reset": "never"},
                    "training": {**TINY["training"], "momentum": 0.5}}


# Neurotoxin reads the last global update (every rank observes it), its clients follow LeadFL, and
# model replacement scales their uploads; DBA's pieces are scored on rank 0.
NEW_ATTACKS = {"attack": {"type": "neurotoxin", "follow_client_defense": True, "neurotoxin": {"mask_share": 0.3}},
               "client_defense": {"type": "leadfl"}, "model_poisoning": {"type": "model_replacement"}}
CASES = {"flwbc": {}, "original, momentum never": CARRIED_MOMENTUM, "neurotoxin following leadfl": NEW_ATTACKS,
         "dba": {"attack": {"type": "dba"}}}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_ranks_give_the_metrics_of_one_process(tmp_path, case):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**TINY, **CASES[case]}))
    finished = run_on_two_gloo_ranks(config_file, tmp_path / "two")
    assert finished.returncode == 0, finished.stderr[-3000:]

    cfg = load_config(None, config_file, ["engine=sequential"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner.run(cfg, tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)

    assert metrics_without_timing(tmp_path / "two") == metrics_without_timing(tmp_path / "one")
    if case == "original, momentum never":
        saved = {name: read_checkpoint(tmp_path / name / io.CHECKPOINT_FILE)["engine_state"]["clients"]
                 for name in ("one", "two")}
        assert sorted(saved["two"]) == sorted(saved["one"]) and len(saved["one"]) > 5
        for client, entry in saved["one"].items():
            assert all(torch.equal(a, b) for a, b in zip(entry["momentum"], saved["two"][client]["momentum"]))
    effect = [row["attack_effect"] for row in reporting.read_metrics(tmp_path / "two")]
    assert len(effect) == 3 and all(value > 0 for value in effect)
    assert (tmp_path / "two" / "attack_effect.png").is_file()
    summary = json.loads((tmp_path / "two" / io.SUMMARY_FILE).read_text())
    assert summary["settings"]["engine (resolved)"] == "sequential on each of 2 ranks"
    # Only rank 0 prints: one summary block, one engine line.
    assert finished.stdout.count("results:") == 1
    assert finished.stderr.count("engine: sequential on each of 2 ranks") == 1


def test_shares_split_the_clients_contiguously_and_evenly():
    assert distributed.shares(5, 2) == [(0, 3), (3, 5)]
    assert distributed.shares(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert distributed.shares(0, 3) == [(0, 0)] * 3


def test_one_process_is_not_distributed(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_with_several_ranks()
    assert distributed.is_main_process()
    assert distributed.init_from_env("cpu") == torch.device("cpu")
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


def test_a_pinned_gpu_under_several_local_ranks_names_the_fix(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match=r"cuda:0.*allowed under torchrun: cuda .* or cpu; fix: --device cuda"):
        distributed.rank_device(torch.device("cuda:0"))


def test_a_bad_world_size_variable_is_a_config_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        distributed.launched_with_several_ranks()
