"""`eval.every`: which rounds are scored, the empty cells of the others, and every reader of a
run (summary, plots, read-back, resume) over such a run."""

from __future__ import annotations

import csv

import pytest

from sim import reporting, runner
from sim.config import load_config
from sim.errors import ConfigError
from sim.metrics import is_scored_round
from sim.reporting import read_finished, read_metrics, replot
from sim.runner import run

from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

SCORES = ("main_accuracy", "backdoor_accuracy", "test_loss", "backdoor_margin")


def tiny(*extra: str):
    return load_config(overrides=[*tiny_synthetic(), "selection.schedule=periodic", "selection.period=2",
                                  "selection.burst_rounds=1", "selection.burst_malicious=2", "server.aggregator=median", *extra])


def csv_rows(out_dir) -> list[dict[str, str]]:
    with open(out_dir / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_every_kth_round_and_the_last_are_scored():
    # worked by hand: 7 rounds, every 3 -> rounds 2 and 5, and 6 as the last
    assert [r for r in range(7) if is_scored_round(r, 7, 3)] == [2, 5, 6]
    assert [r for r in range(4) if is_scored_round(r, 4, 1)] == [0, 1, 2, 3]
    assert [r for r in range(3) if is_scored_round(r, 3, 10)] == [2]


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "two", "null"])
def test_a_bad_eval_every_is_refused_naming_the_setting(value):
    with pytest.raises(ConfigError, match=r"eval\.every"):
        load_config(overrides=[f"eval.every={value}"])


def test_unscored_rounds_leave_empty_cells_and_the_scored_ones_match_a_run_scored_every_round(tmp_path):
    every_round = run(tiny("rounds=5"), tmp_path / "every", progress=False)
    summary = run(tiny("rounds=5", "eval.every=2"), tmp_path / "second", progress=False)

    full, sparse = csv_rows(tmp_path / "every"), csv_rows(tmp_path / "second")
    for round_index, (a, b) in enumerate(zip(full, sparse)):
        if round_index in (1, 3, 4):  # scored: the same model, so the same scores
            assert all(b[column] != "" and b[column] == a[column] for column in SCORES)
        else:
            assert all(b[column] == "" for column in SCORES)
        # training never depends on the scoring
        assert {k: v for k, v in a.items() if k not in SCORES + ("wall_time_s",)} == \
               {k: v for k, v in b.items() if k not in SCORES + ("wall_time_s",)}

    rows = read_metrics(tmp_path / "second")
    scored = [row for row in rows if row["main_accuracy"] is not None]
    assert [row["round"] for row in scored] == [1, 3, 4]
    assert summary["final_main_accuracy"] == every_round["final_main_accuracy"] == rows[-1]["main_accuracy"]
    assert summary["best_main_accuracy"] == max(row["main_accuracy"] for row in scored)
    assert summary["mean_backdoor_accuracy"] == pytest.approx(
        sum(row["backdoor_accuracy"] for row in scored) / len(scored))
    assert summary["settings"]["eval.every"] == 2 and "eval.every" not in every_round["settings"]
    assert "main accuracy (final)" in reporting.format_summary(summary)
    assert reporting.progress_postfix(rows[0])["main"] == "not scored"

    # read back, redrawn, resumed when finished: nothing refused, nothing rewritten
    assert read_finished(tmp_path / "second", tiny("rounds=5", "eval.every=2")) == summary
    assert [path.name for path in replot(tmp_path / "second")] == ["accuracy.png"]
    before = (tmp_path / "second" / "metrics.csv").read_bytes()
    assert run(tiny("rounds=5", "eval.every=2"), tmp_path / "second", resume=True, progress=False) == summary
    assert (tmp_path / "second" / "metrics.csv").read_bytes() == before


def test_a_run_stopped_between_scorings_resumes_to_the_uninterrupted_runs_rows(tmp_path, monkeypatch):
    cfg = tiny("rounds=5", "eval.every=3")
    run(cfg, tmp_path / "straight", progress=False)

    real = runner._round

    def stopping(cfg, parts, global_params, round_index):
        if round_index == 3:
            raise KeyboardInterrupt
        return real(cfg, parts, global_params, round_index)

    monkeypatch.setattr(runner, "_round", stopping)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "stopped", progress=False)
    monkeypatch.setattr(runner, "_round", real)
    run(cfg, tmp_path / "stopped", resume=True, progress=False)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "wall_time_s"} for row in rows]  # noqa: E731
    assert strip(csv_rows(tmp_path / "stopped")) == strip(csv_rows(tmp_path / "straight"))
    assert [row["main_accuracy"] != "" for row in csv_rows(tmp_path / "stopped")] == [False, False, True, False, True]


def test_the_shadow_run_is_scored_on_the_same_rounds(tmp_path):
    run(tiny("rounds=3", "eval.every=2", "metrics.attack_effect=true"), tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [row["shadow_main_accuracy"] is not None for row in rows] == [False, True, True]
    assert [row["shadow_backdoor_margin"] is not None for row in rows] == [False, True, True]
    assert all(row["attack_effect"] is not None for row in rows)  # the distance is measured every round
    assert all(row["attack_effect_backdoor"] is not None for row in rows)
    assert [path.name for path in replot(tmp_path / "run")] == ["accuracy.png", "attack_effect.png"]
