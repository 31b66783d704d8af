"""The attack effect (sim.attack_effect): the shadow run, its columns, summary, plot and resume."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from sim.state import read_checkpoint
from sim import reporting
from sim.attack_effect import split_uniform
from sim.config import load_config
from sim.errors import ConfigError
from sim.reporting import read_metrics
from sim.runner import run
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

EFFECT_COLUMNS = ("attack_effect", "attack_effect_uniform", "attack_effect_rest", "attack_effect_ratio",
                  "shadow_main_accuracy", "shadow_backdoor_margin", "attack_effect_backdoor")
ENGINES = ("sequential", "batched")


def config(*extra: str):
    return load_config(overrides=[*tiny_synthetic(), "rounds=3", "attack.type=backdoor", "server.aggregator=fedavg",
                                  *extra])


def checkpoint(out_dir):
    return read_checkpoint(out_dir / "checkpoint.pt")


def columns(out_dir, names) -> list[list[str]]:
    with open(out_dir / "metrics.csv", newline="") as stream:
        return [[row[name] for name in names] for row in csv.DictReader(stream)]


def test_split_uniform_projects_each_tensor_on_its_all_ones_direction():
    # Tensor 1 = [1, 3]: mean 2, uniform part [2, 2] (norm sqrt 8), rest [-1, 1] (norm sqrt 2);
    # tensor 2 = [1, 1, 1]: all uniform (norm sqrt 3).
    norm, uniform, rest = split_uniform(torch.tensor([1.0, 3.0, 1.0, 1.0, 1.0]), [2, 3])
    assert norm == pytest.approx(math.sqrt(13))
    assert uniform == pytest.approx(math.sqrt(8 + 3))
    assert rest == pytest.approx(math.sqrt(2))
    # One tensor of all the same value is all uniform; a zero-mean one has none.
    assert split_uniform(torch.full((4,), -0.5), [4])[1:] == pytest.approx((1.0, 0.0))
    assert split_uniform(torch.tensor([1.0, -1.0]), [2])[1:] == pytest.approx((0.0, math.sqrt(2)))


@pytest.mark.parametrize("engine", ENGINES)
def test_without_a_selected_malicious_client_the_attack_effect_is_exactly_zero(tmp_path, engine):
    # Malicious clients exist and would attack, but none is ever selected; DP and a stateful
    # aggregator run in both trajectories.
    cfg = config(f"engine={engine}", "selection.fixed_malicious=0", "metrics.attack_effect=true",
                 "privacy.type=gaussian", "server.aggregator=sparsefed", "server.sparsefed.k=0.5")
    summary = run(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [row["malicious_selected"] for row in rows] == [0, 0, 0]
    for row in rows:
        assert row["attack_effect"] == 0.0
        assert row["attack_effect_uniform"] == 0.0 and row["attack_effect_rest"] == 0.0
        assert row["attack_effect_ratio"] is None
        assert row["shadow_main_accuracy"] == row["main_accuracy"]
    saved = checkpoint(tmp_path / "run")
    assert torch.equal(saved["shadow_state"]["params"], saved["global_params"])
    assert summary["attack_effect"]["max_norm"] == 0.0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("uploads", [(), ("model_poisoning.type=lie", "privacy.type=gaussian"), ("carried momentum",)],
                         ids=["data-poisoning", "model-poisoning-with-dp", "momentum-carried-across-rounds"])
def test_the_shadow_is_the_run_in_which_the_malicious_clients_are_benign(tmp_path, engine, uploads):
    common = [f"engine={engine}", "server.aggregator=sparsefed", "server.sparsefed.k=0.5", "privacy.epsilon=50"]
    if uploads == ("carried momentum",):
        # Per-client momentum kept across rounds: the shadow keeps its own clients' buffers,
        # apart from the run's (a shared store would give the shadow the attackers' momentum).
        common += ["client_defense.type=leadfl", "client_defense.variant=original",
                   "client_defense.momentum_reset=never", "training.momentum=0.5"]
        uploads = ()
    attacked = config(*common, *uploads, "metrics.attack_effect=true")
    run(attacked, tmp_path / "attacked", progress=False)
    # The same selections with honest malicious clients: DP (if on) on every row, no attack.
    honest_uploads = [setting for setting in uploads if setting.startswith("privacy.")]
    run(config(*common, *honest_uploads, "attack.type=none"), tmp_path / "honest", progress=False)

    attacked_rows, honest_rows = read_metrics(tmp_path / "attacked"), read_metrics(tmp_path / "honest")
    assert all(row["malicious_selected"] == 2 for row in attacked_rows)
    assert [row["selected"] for row in attacked_rows] == [row["selected"] for row in honest_rows]
    assert [row["shadow_main_accuracy"] for row in attacked_rows] == [row["main_accuracy"] for row in honest_rows]
    assert torch.equal(checkpoint(tmp_path / "attacked")["shadow_state"]["params"],
                       checkpoint(tmp_path / "honest")["global_params"])
    assert all(row["attack_effect"] > 0 for row in attacked_rows)
    for row in attacked_rows:
        assert row["attack_effect"] ** 2 == pytest.approx(row["attack_effect_uniform"] ** 2 + row["attack_effect_rest"] ** 2)
    ratios = [row["attack_effect_ratio"] for row in attacked_rows]
    assert ratios[0] is None  # delta_{-1} = 0
    assert ratios[1:] == pytest.approx([b["attack_effect"] / a["attack_effect"]
                                        for a, b in zip(attacked_rows, attacked_rows[1:])])


def test_measuring_the_attack_effect_changes_nothing_of_the_run(tmp_path):
    # Periodic bursts: benign rounds follow malicious ones, so the decay ratio is summarised.
    periodic = ["selection.schedule=periodic", "selection.period=3", "selection.burst_rounds=1",
                "selection.burst_malicious=2", "rounds=4"]
    run(config(*periodic), tmp_path / "off", progress=False)
    summary = run(config(*periodic, "metrics.attack_effect=true"), tmp_path / "on", progress=False)
    kept = [c for c in reporting.METRIC_COLUMNS if c not in reporting.TIMING_COLUMNS and c not in EFFECT_COLUMNS]
    assert columns(tmp_path / "on", kept) == columns(tmp_path / "off", kept)
    assert all(cell == "" for row in columns(tmp_path / "off", EFFECT_COLUMNS) for cell in row)
    assert "attack_effect" not in json.loads((tmp_path / "off" / "summary.json").read_text())
    assert not (tmp_path / "off" / "attack_effect.png").exists()

    rows = read_metrics(tmp_path / "on")
    assert [row["malicious_selected"] > 0 for row in rows] == [True, False, False, True]
    effect = summary["attack_effect"]
    assert effect == json.loads((tmp_path / "on" / "summary.json").read_text())["attack_effect"]
    assert effect["benign_rounds_with_decay_ratio"] == 2
    assert effect["mean_decay_ratio"] == pytest.approx((rows[1]["attack_effect_ratio"] + rows[2]["attack_effect_ratio"]) / 2)
    assert effect["final_norm"] == rows[-1]["attack_effect"]
    assert (tmp_path / "on" / "attack_effect.png").stat().st_size > 0


def test_a_resumed_run_gives_the_attack_effect_of_an_uninterrupted_one(tmp_path):
    extra = ["metrics.attack_effect=true", "server.aggregator=sparsefed", "server.sparsefed.k=0.5"]
    run(config("rounds=4", *extra), tmp_path / "straight", progress=False)
    run(config("rounds=2", *extra), tmp_path / "stopped", progress=False)
    assert checkpoint(tmp_path / "stopped")["shadow_state"]["aggregator"]["error"].abs().sum() > 0
    run(config("rounds=4", *extra), tmp_path / "stopped", resume=True, progress=False)
    names = [c for c in reporting.METRIC_COLUMNS if c not in reporting.TIMING_COLUMNS]
    assert columns(tmp_path / "stopped", names) == columns(tmp_path / "straight", names)
    assert columns(tmp_path / "stopped", ["attack_effect_ratio"])[2] != [""]  # the ratio spans the restart


def test_replot_redraws_the_attack_effect_plot(tmp_path):
    run(config("rounds=2", "metrics.attack_effect=true"), tmp_path / "run", progress=False)
    (tmp_path / "run" / "attack_effect.png").unlink()
    paths = reporting.replot(tmp_path / "run")
    assert paths == [tmp_path / "run" / "accuracy.png", tmp_path / "run" / "attack_effect.png"]
    assert paths[1].stat().st_size > 0


def test_metrics_written_before_the_attack_effect_columns_still_read(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "round,main_accuracy,backdoor_accuracy,test_loss,malicious_selected,selected,malicious_ids,kept,"
        "rejected_nonfinite,wall_time_s\n0,10.0,,2.3,1,1 2,2,1 2,,0.5\n"
    )
    (row,) = read_metrics(tmp_path)
    assert row["main_accuracy"] == 10.0 and row["attack_effect"] is None


def test_attack_effect_must_be_true_or_false():
    with pytest.raises(ConfigError, match=r"metrics.attack_effect=1 must be true or false; fix: --set metrics.attack_effect=false"):
        load_config(overrides=["metrics.attack_effect=1"])
