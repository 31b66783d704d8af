"""The attacks-smoke preset: every attack added with the component design runs from a preset on
both engines, and each one changes the run (no attack silently falls back to another)."""

from __future__ import annotations

import json

import pytest

from sim.cli import main
from sim.records import read_metrics


@pytest.mark.parametrize("engine", ["sequential", "batched"])
def test_every_new_attack_runs_from_the_preset_and_changes_the_run(tmp_path, engine):
    out = tmp_path / engine
    assert main(["compare", "--preset", "attacks-smoke", "--out", str(out), "--jobs", "1", "--no-progress",
                 "--set", f"engine={engine}"]) == 0
    variants = json.loads((out / "comparison.json").read_text())["variants"]
    assert list(variants) == ["backdoor", "dba", "neurotoxin", "backdoor following leadfl", "ipm", "model replacement"]
    finals = {label: tuple(read_metrics(out / entry["folder"])[-1][key] for key in ("main_accuracy", "test_loss"))
              for label, entry in variants.items()}
    assert len(set(finals.values())) == len(finals), finals
    dba = read_metrics(out / variants["dba"]["folder"])
    assert all(len(row["backdoor_accuracy_pieces"].split()) == 3 for row in dba)
