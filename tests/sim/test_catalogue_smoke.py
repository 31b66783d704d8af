"""The catalogue-smoke preset: every server rule and attack of the catalogue runs for two rounds
at the demo's scale on FashionMNIST, from the preset, and leaves a finished, finite run."""

from __future__ import annotations

import json
import math

import pytest

from sim.cli import main
from sim.config import compare_variants
from sim.records import read_metrics
from simtest import requires_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

CATALOGUE_RULES = {"prodigy", "flame", "foolsgold", "fltrust", "norm_clipping", "rlr", "rfa", "centered_clipping"}
CATALOGUE_ATTACKS = {"dba", "neurotoxin"}
CATALOGUE_MODEL_ATTACKS = {"model_replacement", "ipm"}


def test_the_preset_names_every_catalogue_rule_and_attack():
    settings = [dict(pairs) for pairs in compare_variants(preset="catalogue-smoke").values()]
    assert CATALOGUE_RULES <= {s.get("server.aggregator") for s in settings}
    assert CATALOGUE_ATTACKS <= {s.get("attack.type") for s in settings}
    assert CATALOGUE_MODEL_ATTACKS <= {s.get("model_poisoning.type") for s in settings}
    assert any(s.get("attack.follow_client_defense") for s in settings)


@requires_fashion_mnist
def test_every_catalogue_rule_and_attack_runs_two_rounds_from_the_preset(tmp_path):
    out = tmp_path / "smoke"
    assert main(["compare", "--preset", "catalogue-smoke", "--out", str(out), "--jobs", "1", "--no-progress"]) == 0
    variants = json.loads((out / "comparison.json").read_text())["variants"]
    assert len(variants) == len(compare_variants(preset="catalogue-smoke"))
    for label, entry in variants.items():
        rows = read_metrics(out / entry["folder"])
        assert len(rows) == 2, label
        assert (out / entry["folder"] / "manifest.json").is_file(), label
        for row in rows:
            assert 0 <= row["main_accuracy"] <= 100 and math.isfinite(row["test_loss"]), (label, row)
