"""A component added the documented way needs nothing else: a toy aggregation rule, a toy
model-poisoning attack and a toy data-poisoning attack, each defined here with its settings declaration, registered with one
dict entry, and run through `leadfl-sim run` settings (docs/architecture.md, "How to add ...").

The registries are read when `sim.config` builds its schema, so the registration happens in a
fresh interpreter before that import, as a registry line in the package would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from sim.attacks.data.base import DataPoisoningAttack
from sim.attacks.model_poisoning import ModelPoisoningAttack
from sim.defenses.client import UpdateRule
from sim.server.aggregate import row_mean
from sim.server.base import Aggregator
from sim.settings import setting

from simtest import tiny_synthetic

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ShrunkMeanSettings:
    factor: float = setting(1.0, "float", low=0, high=1, help="the mean is multiplied by this")


class ShrunkMean(Aggregator):
    """The mean of the rows times `factor`; reads the round's seeded generator to prove it is given."""

    settings = ShrunkMeanSettings
    needs = frozenset({"generator", "clients"})

    def __init__(self, factor: float = 1.0):
        self.factor = float(factor)
        self.rounds_seen: list[int] = []

    def _aggregate(self, updates, context):
        assert context.generator is not None and len(context.clients) == updates.shape[0]
        self.rounds_seen.append(context.round)
        return row_mean(updates) * self.factor, list(range(updates.shape[0]))


@dataclass
class ConstantUploadSettings:
    value: float = setting(0.5, "float", help="every coordinate of a malicious upload")


class ConstantUpload(ModelPoisoningAttack):
    """Every malicious row is `value` in every coordinate."""

    name = "constant_upload"
    settings = ConstantUploadSettings

    def __init__(self, value: float = 0.5):
        self.value = float(value)

    def craft(self, updates, malicious, context):
        return torch.full((int(malicious.sum()), updates.shape[1]), self.value)


@dataclass
class OneLabelSettings:
    label: int = setting(3, "int", low=0, help="the label every malicious example is given")


class OneLabel(DataPoisoningAttack):
    """Every label of a malicious row's batch becomes `label`; trained with the benign rows."""

    name = "one_label"
    settings = OneLabelSettings
    description = "one label"
    trains_backdoor = False

    def start_round(self, clients, roles, plans, steps):
        self.rows = {row for row, role in enumerate(roles) if role == self.name}

    def poison_task_batch(self, x, y, rows, step):
        mine = torch.tensor([row in self.rows for row in rows])[:, None]
        return x, torch.where(mine, torch.full_like(y, self.options.label), y)


@dataclass
class ScaledStepSettings:
    step_factor: float = setting(1.0, "float", low=0, high=1, help="defended rows step lr * step_factor")


class ScaledStep(UpdateRule):
    """Plain SGD without momentum; the defended rows take `step_factor` times the step."""

    settings = ScaledStepSettings

    def __init__(self, settings, *, momentum, names, shapes=None):
        super().__init__(settings, momentum=0.0, names=names, shapes=shapes)
        self.factor = float(settings.step_factor)

    def step(self, grads, lookahead, active, step_in_epoch, lr):
        scale = torch.tensor([self.factor if flag else 1.0 for flag in self.defended], device=self.device)
        for param, grad in zip(self.params, grads):
            param.sub_(grad * (lr * scale).reshape(-1, *([1] * (grad.dim() - 1))))


def _run_with_toys(tmp_path, overrides):
    """Registers the toys (one entry each), then runs `leadfl-sim run` in the same interpreter."""
    script = f"""
import sys, json
sys.path[:0] = [{str(Path(__file__).parent)!r}]
import test_components as toys
from sim.server.registry import AGGREGATORS
from sim.attacks.model_poisoning import MODEL_POISONING
AGGREGATORS["shrunk_mean"] = toys.ShrunkMean
MODEL_POISONING["constant_upload"] = toys.ConstantUpload
from sim.attacks.data.registry import DATA_POISONING
DATA_POISONING["one_label"] = toys.OneLabel
from sim.defenses.client import CLIENT_DEFENSES
CLIENT_DEFENSES["scaled_step"] = toys.ScaledStep
from sim.cli import main
code = main(["run", "--out", {str(tmp_path / "run")!r}, *{overrides!r}])
sys.exit(code)
"""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)


def test_a_rule_and_an_attack_registered_from_outside_run_through_the_settings(tmp_path):
    sets = [*tiny_synthetic(), "rounds=2", "attack.type=none", "server.aggregator=shrunk_mean",
            "server.shrunk_mean.factor=0.5", "model_poisoning.type=constant_upload",
            "model_poisoning.constant_upload.value=0.25"]
    result = _run_with_toys(tmp_path, [item for pair in (("--set", s) for s in sets) for item in pair])
    assert result.returncode == 0, result.stderr
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "shrunk_mean:\n    factor: 0.5" in saved and "constant_upload:\n    value: 0.25" in saved
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["settings"]["server.aggregator"] == "shrunk_mean"
    assert summary["settings"]["server.shrunk_mean.factor"] == 0.5


def test_a_registered_rules_settings_are_checked_against_its_declaration(tmp_path):
    sets = [*tiny_synthetic(), "rounds=1", "server.aggregator=shrunk_mean", "server.shrunk_mean.factor=2"]
    result = _run_with_toys(tmp_path, [item for pair in (("--set", s) for s in sets) for item in pair])
    assert result.returncode == 2
    assert "server.shrunk_mean.factor=2.0 is out of range: it must be in [0, 1]; fix: --set server.shrunk_mean.factor=1.0" in result.stderr
    sets = [*tiny_synthetic(), "rounds=1", "server.aggregator=shrunk_mean", "server.shrunk_mean.facter=0.5"]
    result = _run_with_toys(tmp_path, [item for pair in (("--set", s) for s in sets) for item in pair])
    assert result.returncode == 2 and "did you mean 'server.shrunk_mean.factor'" in result.stderr


def test_a_data_poisoning_attack_registered_from_outside_trains_the_malicious_clients(tmp_path):
    sets = [*tiny_synthetic(), "rounds=2", "server.aggregator=fedavg", "attack.type=one_label",
            "attack.one_label.label=4"]
    result = _run_with_toys(tmp_path, [item for pair in (("--set", s) for s in sets) for item in pair])
    assert result.returncode == 0, result.stderr
    assert "one_label:\n    label: 4" in (tmp_path / "run" / "config.yaml").read_text()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["settings"]["attack.one_label.label"] == 4
    # Its rows train on other labels than the honest run's: the final models differ.
    honest = _run_with_toys(tmp_path / "honest", [item for pair in (("--set", s) for s in [
        *tiny_synthetic(), "rounds=2", "server.aggregator=fedavg", "attack.type=none"]) for item in pair])
    assert honest.returncode == 0, honest.stderr
    poisoned = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[-1].split(",")[1]
    clean = (tmp_path / "honest" / "run" / "metrics.csv").read_text().splitlines()[-1].split(",")[1]
    assert poisoned != clean
    sets = [*tiny_synthetic(), "rounds=1", "attack.type=one_label", "attack.one_label.label=-1"]
    result = _run_with_toys(tmp_path / "bad", [item for pair in (("--set", s) for s in sets) for item in pair])
    assert result.returncode == 2 and "attack.one_label.label=-1 is out of range" in result.stderr


def test_a_client_defense_registered_from_outside_runs_with_its_declared_setting(tmp_path):
    sets = [*tiny_synthetic(), "rounds=2", "server.aggregator=fedavg", "client_defense.type=scaled_step",
            "client_defense.step_factor=0.5"]
    result = _run_with_toys(tmp_path, [item for pair in (("--set", s) for s in sets) for item in pair])
    assert result.returncode == 0, result.stderr
    assert "step_factor: 0.5" in (tmp_path / "run" / "config.yaml").read_text()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["settings"]["client_defense.step_factor"] == 0.5
    sets = [*tiny_synthetic(), "rounds=1", "client_defense.type=scaled_step", "client_defense.step_factor=2"]
    result = _run_with_toys(tmp_path / "bad", [item for pair in (("--set", s) for s in sets) for item in pair])
    assert result.returncode == 2
    assert "client_defense.step_factor=2.0 is out of range: it must be in [0, 1]" in result.stderr


def test_a_setting_two_client_defenses_declare_unlike_is_refused_when_the_section_is_made():
    import pytest

    from sim.config import flat_section

    @dataclass
    class Wide:
        step_factor: float = setting(1.0, "float", low=0, high=2)

    class Other(UpdateRule):
        settings = Wide

    with pytest.raises(TypeError, match="declares 'step_factor' unlike an earlier component"):
        flat_section("Section", [], {"scaled_step": ScaledStep, "other": Other})
