"""The round loop's outputs, determinism, checkpoint/resume, and the engine factory."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from sim import reporting, runner
from sim.engines import registry
from sim.config import load_config
from sim.errors import ConfigError
from sim.reporting import METRIC_COLUMNS, read_metrics
from sim.runner import run
from sim.state import encode_checkpoint, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# Seconds-sized runs on the synthetic dataset; periodic bursts so some rounds hold malicious
# clients, and SparseFed so the aggregator carries state from round to round.
TINY = [
    "data.dataset=synthetic",
    "data.synthetic_train_size=400",
    "data.synthetic_test_size=100",
    "model=mlp",
    "clients.num_clients=8",
    "clients.num_malicious=2",
    "clients.clients_per_round=4",
    "selection.schedule=periodic",
    "selection.period=3",
    "selection.burst_rounds=1",
    "selection.burst_malicious=2",
    "training.local_steps=3",
    "training.batch_size=16",
    "server.aggregator=sparsefed",
    "server.sparsefed.k=0.5",
    "client_defense.type=ldp",
    "eval.batch_size=50",
    "eval.test_size=60",
]




def tiny_config(*extra: str):
    return load_config(overrides=[*TINY, *extra])


def metrics_without_timing(out_dir) -> list[list[str]]:
    with open(out_dir / "metrics.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    keep = [i for i, column in enumerate(rows[0]) if column not in reporting.TIMING_COLUMNS]
    return [[row[i] for i in keep] for row in rows]


def test_run_writes_config_metrics_summary_and_plot(tmp_path):
    cfg = tiny_config("rounds=3")
    summary = run(cfg, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "summary.json", "accuracy.png", "checkpoint.pt"):
        assert (out / name).is_file(), name
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp")), "temporary files left behind"

    with open(out / "metrics.csv", newline="") as stream:
        header = next(csv.reader(stream))
    assert tuple(header) == METRIC_COLUMNS
    rows = read_metrics(out)
    assert [row["round"] for row in rows] == [0, 1, 2]
    # Round 0 is a burst of 2 malicious out of 4; rounds 1 and 2 are all benign.
    assert [row["malicious_selected"] for row in rows] == [2, 0, 0]
    first = rows[0]
    selected = [int(c) for c in first["selected"].split()]
    malicious = [int(c) for c in first["malicious_ids"].split()]
    assert len(selected) == 4 and set(malicious) <= set(selected)
    assert set(int(c) for c in first["kept"].split()) <= set(selected)
    for row in rows:
        assert 0 <= row["main_accuracy"] <= 100 and 0 <= row["backdoor_accuracy"] <= 100
        # Scored on the first 60 test images only (eval.test_size).
        assert (row["main_accuracy"] * 60 / 100) == pytest.approx(round(row["main_accuracy"] * 60 / 100))
        assert row["test_loss"] > 0 and row["wall_time_s"] >= 0

    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    for key in (
        "final_main_accuracy",
        "best_main_accuracy",
        "final_backdoor_accuracy",
        "mean_backdoor_accuracy",
        "rounds",
        "wall_time_s",
        "settings",
    ):
        assert key in saved, key
    assert saved["rounds"] == 3
    assert saved["final_main_accuracy"] == rows[-1]["main_accuracy"]
    assert saved["best_main_accuracy"] == max(row["main_accuracy"] for row in rows)
    assert saved["mean_backdoor_accuracy"] == pytest.approx(sum(r["backdoor_accuracy"] for r in rows) / 3)
    assert saved["settings"]["client_defense.type"] == "ldp"
    assert saved["settings"]["server.aggregator"] == "sparsefed"
    assert load_config(path=out / "config.yaml") == cfg


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    cfg = tiny_config("rounds=3")
    run(cfg, tmp_path / "a", progress=False)
    run(cfg, tmp_path / "b", progress=False)
    assert metrics_without_timing(tmp_path / "a") == metrics_without_timing(tmp_path / "b")


def _recording_engine(monkeypatch) -> list[int]:
    """Patch the engine factory so every trained round is recorded."""
    trained_rounds: list[int] = []
    real_build_engine = runner.build_engine

    def build_engine(*args, **kwargs):
        engine = real_build_engine(*args, **kwargs)
        train_clients = engine.train_clients

        def recording(global_params, clients, round):
            trained_rounds.append(round)
            return train_clients(global_params, clients, round)

        engine.train_clients = recording
        return engine

    monkeypatch.setattr(runner, "build_engine", build_engine)
    return trained_rounds


def test_resume_continues_without_redoing_rounds_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    run(tiny_config("rounds=5"), tmp_path / "straight", progress=False)

    trained_rounds = _recording_engine(monkeypatch)
    # A run stopped after 2 rounds leaves what a 2-round run leaves: its checkpoint.
    run(tiny_config("rounds=2"), tmp_path / "stopped", progress=False)
    assert trained_rounds == [0, 1]
    summary = run(tiny_config("rounds=5"), tmp_path / "stopped", resume=True, progress=False)
    assert trained_rounds == [0, 1, 2, 3, 4]
    assert summary["rounds"] == 5
    assert metrics_without_timing(tmp_path / "stopped") == metrics_without_timing(tmp_path / "straight")

    # Resuming a finished run trains nothing and rewrites the same results.
    run(tiny_config("rounds=5"), tmp_path / "stopped", resume=True, progress=False)
    assert trained_rounds == [0, 1, 2, 3, 4]


def test_resume_restores_the_aggregator_state(tmp_path):
    run(tiny_config("rounds=2"), tmp_path / "run", progress=False)
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint["next_round"] == 2
    # SparseFed's error feedback holds the coordinates it has not released yet.
    assert checkpoint["aggregator_state"]["error"].abs().sum() > 0


def test_resume_with_a_changed_config_is_refused(tmp_path):
    run(tiny_config("rounds=2"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError) as caught:
        run(tiny_config("rounds=4", "client_defense.noise_scale=0.3"), tmp_path / "run", resume=True, progress=False)
    message = str(caught.value)
    assert "client_defense.noise_scale (saved 0.2, requested 0.3)" in message
    assert "fix:" in message
    assert len(read_metrics(tmp_path / "run")) == 2  # untouched


def test_resume_refuses_fewer_rounds_than_done_and_missing_checkpoints(tmp_path):
    run(tiny_config("rounds=3"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"3 rounds are already done; fix: --set rounds=3 or more"):
        run(tiny_config("rounds=2"), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"nothing to resume .*no checkpoint.pt"):
        run(tiny_config("rounds=2"), tmp_path / "empty", resume=True, progress=False)
    (tmp_path / "run" / "checkpoint.pt").unlink()
    with pytest.raises(ConfigError, match=r"no checkpoint.pt \(it holds a finished run: see its summary.json\)"):
        run(tiny_config("rounds=3"), tmp_path / "run", resume=True, progress=False)


def test_a_new_run_does_not_overwrite_an_existing_one(tmp_path):
    run(tiny_config("rounds=1"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"already holds a run .*fix: pass --resume"):
        run(tiny_config("rounds=1"), tmp_path / "run", progress=False)


class _FixedUpdatesEngine:
    """Returns the same update for every client, except NaN for client `poisoned_client`."""

    def __init__(self, num_parameters: int, poisoned_client: int):
        self.num_parameters = num_parameters
        self.poisoned_client = poisoned_client

    def train_clients(self, global_params, clients, round, roles=None):
        updates = torch.full((len(clients), self.num_parameters), 1e-3)
        for row, client in enumerate(clients):
            if client == self.poisoned_client:
                updates[row] = float("nan")
        return updates


def test_engines_plug_in_through_the_factory_and_non_finite_updates_are_recorded(tmp_path, monkeypatch):
    cfg = tiny_config("rounds=2", "server.aggregator=fedavg", "selection.schedule=fixed", "selection.fixed_malicious=1")
    from sim.selection import Selector

    chosen = Selector.from_config(cfg).select(0)
    poisoned = chosen[0]

    class FixedEngine(_FixedUpdatesEngine):
        def __init__(self, model_name, dataset, partitions, malicious, *sections, seed, device, rounds):
            assert len(partitions) == cfg.clients.num_clients
            assert len(malicious) == cfg.clients.num_malicious
            from sim.models import build_model, num_trainable_parameters

            model = build_model(model_name, dataset.image_shape, dataset.num_classes)
            super().__init__(num_trainable_parameters(model), poisoned)

    monkeypatch.setitem(registry.ENGINES, "sequential", FixedEngine)
    run(cfg, tmp_path / "run", progress=False)
    first = read_metrics(tmp_path / "run")[0]
    assert first["rejected_nonfinite"] == str(poisoned)
    assert str(poisoned) not in first["kept"].split()
    assert sorted(first["kept"].split() + [str(poisoned)]) == sorted(first["selected"].split())


def test_unknown_engine_is_a_config_error(tmp_path):
    cfg = tiny_config("rounds=1")
    with pytest.raises(ConfigError, match=r"engine='vectorised' is not one of sequential, batched, auto; fix: --set engine="):
        load_config(overrides=[*TINY, "engine=vectorised"])
    cfg.engine = "vectorised"  # past validation, the factory still refuses it
    with pytest.raises(ConfigError, match=r"engine='vectorised' is not one of sequential, batched, auto; fix: --set engine=auto"):
        registry.build_engine(cfg, None, [], [])


def test_resume_accepts_settings_added_after_the_run_started_only_at_their_default(tmp_path):
    run(tiny_config("rounds=1"), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoint.pt"
    checkpoint = read_checkpoint(path)
    del checkpoint["config"]["client_defense"]["q"]     # as if `q` did not exist when the run started
    path.write_bytes(encode_checkpoint(checkpoint))
    summary = run(tiny_config("rounds=2"), tmp_path / "run", resume=True, progress=False)
    assert summary["rounds"] == 2
    checkpoint = read_checkpoint(path)
    del checkpoint["config"]["client_defense"]["q"]
    path.write_bytes(encode_checkpoint(checkpoint))
    with pytest.raises(ConfigError, match="client_defense.q"):
        run(tiny_config("rounds=3", "client_defense.q=0.3"), tmp_path / "run", resume=True, progress=False)


def test_resume_restores_each_clients_carried_momentum_bit_for_bit(tmp_path):
    # `original` with momentum_reset=never: the per-client momentum store is part of the run's
    # state; a run stopped and resumed ends exactly where the uninterrupted one does.
    carry = ["client_defense.type=leadfl", "client_defense.variant=original", "client_defense.momentum_reset=never",
             "training.momentum=0.5", "selection.schedule=random"]
    run(tiny_config("rounds=4", *carry), tmp_path / "straight", progress=False)
    run(tiny_config("rounds=2", *carry), tmp_path / "stopped", progress=False)
    stopped = read_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert stopped["engine_state"]["clients"], "the checkpoint holds no carried momentum"
    run(tiny_config("rounds=4", *carry), tmp_path / "stopped", resume=True, progress=False)
    assert metrics_without_timing(tmp_path / "stopped") == metrics_without_timing(tmp_path / "straight")
    final = {name: read_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("straight", "stopped")}
    assert torch.equal(final["stopped"]["global_params"], final["straight"]["global_params"])
    for client, entry in final["straight"]["engine_state"]["clients"].items():
        for a, b in zip(entry["momentum"], final["stopped"]["engine_state"]["clients"][client]["momentum"]):
            assert torch.equal(a, b)
    # and the carried momentum changes the run (the test can fail):
    run(tiny_config("rounds=4", *carry[:2], "training.momentum=0.5", "selection.schedule=random"), tmp_path / "reset",
        progress=False)
    reset = read_checkpoint(tmp_path / "reset" / "checkpoint.pt")
    assert reset["engine_state"] is None
    assert not torch.equal(reset["global_params"], final["straight"]["global_params"])
