"""scripts/leaderboard_checks.py: paired verdicts by hand, and the committed analysis held to the
committed trials."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "leaderboard_checks.py"
spec = importlib.util.spec_from_file_location("leaderboard_checks", SCRIPT)
leaderboard_checks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(leaderboard_checks)


def test_a_rule_is_separated_from_the_best_only_when_its_paired_interval_excludes_zero():
    # By hand: differences [1, 1.2, 1.4]: mean 1.2, deviation 0.2, half-width 4.303 * 0.2 / sqrt(3) = 0.50.
    assert leaderboard_checks.separated([1.0, 1.2, 1.4]) is True
    # [0.2, 1.2, 2.2]: half-width 2.48 > 1.2
    assert leaderboard_checks.separated([0.2, 1.2, 2.2]) is False
    assert leaderboard_checks.separated([1.0, 2.0]) is None  # fewer than the grid's three seeds
    assert leaderboard_checks.paired({"0": 5.0, "1": 7.0, "2": 1.0}, {"0": 4.0, "2": 2.0}) == [1.0, -1.0]


def test_the_committed_analysis_is_what_the_script_prints_from_the_committed_trials(capsys):
    folder = leaderboard_checks.DEFAULT
    assert leaderboard_checks.main([str(folder)]) == 0
    printed = capsys.readouterr().out
    assert printed == (folder / "analysis.md").read_text()
