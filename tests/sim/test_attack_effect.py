"""The attack effect (sim.attack_effect): the shadow run, its columns, summary, plot and resume."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sim.state import read_checkpoint
from sim import reporting, runner
from sim.attack_effect import ShadowRun, along, backdoor_gradient, split_uniform
from sim.models import build_model, load_flat_parameters_
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


def test_the_backdoor_gradient_by_hand_on_a_linear_model():
    # logits = x W^T + b; the mean cross-entropy towards class t has gradient
    # dW = (softmax - onehot_t)^T x / N, db = mean(softmax - onehot_t), worked here with numpy.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    images = torch.randn(5, 4)
    flat = torch.randn(4 * 3 + 3)
    gradient = backdoor_gradient(model, images, 2)(flat)
    weight, bias = flat[:12].reshape(3, 4).double().numpy(), flat[12:].double().numpy()
    x = images.double().numpy()
    logits = x @ weight.T + bias
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    soft[:, 2] -= 1.0
    expected = np.concatenate([(soft.T @ x / 5).reshape(-1), soft.mean(axis=0)])
    assert gradient.double().numpy() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # Projection on it, by hand: delta . g / ||g|| with g = (3, 4), delta = (1, 1) -> 7 / 5.
    assert along(torch.tensor([1.0, 1.0]), torch.tensor([3.0, 4.0])) == pytest.approx(1.4)
    assert along(torch.tensor([1.0, 1.0]), torch.zeros(2)) is None


def test_attack_effect_backdoor_is_delta_along_the_backdoor_gradient_at_the_shadow(tmp_path):
    cfg = config("rounds=2", "metrics.attack_effect=true")
    run(cfg, tmp_path / "run", progress=False)
    rows, saved = read_metrics(tmp_path / "run"), checkpoint(tmp_path / "run")
    shadow, global_params = saved["shadow_state"]["params"], saved["global_params"]
    # The backdoor task's loss at the shadow model, by autograd on a fresh model: the mean
    # cross-entropy of the first triggered scoring batch towards the target label.
    parts = runner._Parts(cfg, torch.device("cpu"))
    images = parts.scorer.test_set.triggered[0]
    model = build_model(cfg.model, parts.dataset.image_shape, parts.dataset.num_classes, seed=5)
    load_flat_parameters_(model, shadow)
    loss = F.cross_entropy(model(images), torch.full((images.shape[0],), cfg.attack.target_label))
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    g = torch.cat([grad.reshape(-1) for grad in grads]).double()
    delta = (global_params - shadow).double()
    expected = float(delta @ g) / float(g.norm())
    assert rows[-1]["attack_effect_backdoor"] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert rows[-1]["attack_effect_backdoor"] != 0.0
    assert all(row["shadow_backdoor_margin"] is not None and row["backdoor_margin"] is not None for row in rows)
    effect = json.loads((tmp_path / "run" / "summary.json").read_text())["attack_effect"]
    assert effect["final_backdoor_margin"] == rows[-1]["backdoor_margin"]
    assert effect["mean_shadow_backdoor_margin"] == pytest.approx(sum(r["shadow_backdoor_margin"] for r in rows) / 2)
    assert effect["final_attack_effect_backdoor"] == rows[-1]["attack_effect_backdoor"]


def test_the_shadow_margin_is_the_honest_runs_margin(tmp_path):
    common = ["rounds=2", "server.aggregator=fedavg"]
    rows = run(config(*common, "metrics.attack_effect=true"), tmp_path / "attacked", progress=False) and \
        read_metrics(tmp_path / "attacked")
    run(config(*common, "attack.type=none"), tmp_path / "honest", progress=False)
    honest = read_metrics(tmp_path / "honest")
    assert [row["shadow_backdoor_margin"] for row in rows] == [row["backdoor_margin"] for row in honest]
    assert [row["backdoor_margin"] for row in rows] != [row["backdoor_margin"] for row in honest]


class _FixedRows:
    """An engine whose clients' updates are fixed rows, and uploads that pass them on."""

    def __init__(self, rows):
        self.rows = rows

    def train_clients(self, params, clients, round, roles):
        return self.rows.clone()

    def benign(self, updates, clients, round):
        return updates


class _Refuses:
    needs = frozenset()

    def __call__(self, updates, context):
        raise AssertionError("the shadow's own rule must not run under kept='run'")


def test_shadow_kept_run_averages_the_shadows_rows_at_the_runs_kept_positions():
    rows = torch.tensor([[1.0, 2.0], [3.0, 5.0], [100.0, -100.0], [7.0, 11.0]])
    fixed = _FixedRows(rows)
    shadow = ShadowRun(fixed, fixed, _Refuses(), torch.zeros(2), [2], score=lambda params: {},
                       reseed=lambda round: None, kept="run")
    effect = shadow.step(torch.zeros(2), [0, 1, 2, 3], 0, scored=False, run_kept=[0, 1, 3])
    # W^M_1 = 0 + ((1, 2) + (3, 5) + (7, 11)) / 3 = (11/3, 6); delta = -W^M_1.
    assert shadow.params.tolist() == pytest.approx([11 / 3, 6.0])
    assert effect["attack_effect"] == pytest.approx(math.hypot(11 / 3, 6.0))
    shadow.step(torch.zeros(2), [0, 1, 2, 3], 1, scored=False, run_kept=[])  # nothing kept: no step
    assert shadow.params.tolist() == pytest.approx([11 / 3, 6.0])
    with pytest.raises(ValueError, match="kept='run' needs the run's kept rows"):
        shadow.step(torch.zeros(2), [0], 2, scored=False)


@pytest.mark.parametrize("aggregator", ["fedavg", "krum", "multikrum", "fltk_multikrum", "fltk_bulyan"])
def test_shadow_kept_run_without_a_malicious_client_follows_the_run_exactly(tmp_path, aggregator):
    cfg = config(f"server.aggregator={aggregator}", "server.f=1", "selection.fixed_malicious=0", "metrics.attack_effect=true",
                 "metrics.shadow_kept=run")
    run(cfg, tmp_path / "run", progress=False)
    assert all(row["attack_effect"] == 0.0 for row in read_metrics(tmp_path / "run"))


def test_shadow_kept_run_keeps_the_runs_rows_and_own_does_not(tmp_path):
    common = ["server.aggregator=multikrum", "server.f=1", "metrics.attack_effect=true", "rounds=2"]
    run(config(*common, "metrics.shadow_kept=run"), tmp_path / "run", progress=False)
    run(config(*common), tmp_path / "own", progress=False)
    by_run, by_own = read_metrics(tmp_path / "run"), read_metrics(tmp_path / "own")
    assert [row["main_accuracy"] for row in by_run] == [row["main_accuracy"] for row in by_own]  # the run itself
    assert [row["attack_effect"] for row in by_run] != [row["attack_effect"] for row in by_own]


def test_shadow_kept_settings_are_checked():
    with pytest.raises(ConfigError, match=r"metrics.shadow_kept='both' .*own, run"):
        load_config(overrides=["metrics.shadow_kept=both"])
    with pytest.raises(ConfigError, match=r"metrics.shadow_kept=run .* metrics.attack_effect=false runs no shadow; "
                                          r"fix: --set metrics.attack_effect=true"):
        load_config(overrides=["metrics.shadow_kept=run"])
    with pytest.raises(ConfigError, match=r"server.aggregator='median' is not one; allowed: fedavg, krum, multikrum, fltk_multikrum, fltk_bulyan; "
                                          r"fix: --set metrics.shadow_kept=own"):
        load_config(overrides=["metrics.attack_effect=true", "metrics.shadow_kept=run", "server.aggregator=median"])
    assert load_config(overrides=["metrics.attack_effect=true", "metrics.shadow_kept=run",
                                  "server.aggregator=krum", "server.f=0"]).metrics.shadow_kept == "run"
