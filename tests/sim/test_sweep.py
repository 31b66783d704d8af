"""Sweeps: grid files, trial folders, local and Ray execution, resume, and the report over seeds."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.stats import mean_interval, t_cdf, t_quantile
from sim.sweep import expand, load_grid
from simtest import tiny_synthetic

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize(
    "p, df, expected",
    [
        (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776), (0.975, 5, 2.571),
        (0.975, 9, 2.262), (0.975, 10, 2.228), (0.975, 20, 2.086), (0.975, 30, 2.042), (0.975, 120, 1.980),
        (0.95, 5, 2.015), (0.995, 1, 63.657), (0.995, 10, 3.169), (0.9, 3, 1.638),
    ],
)
def test_t_quantile_matches_the_printed_tables_to_three_decimals(p, df, expected):
    assert round(t_quantile(p, df), 3) == expected
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_quantile_is_symmetric_and_tends_to_the_normal_quantile():
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.5, 7) == 0.0
    assert round(t_quantile(0.975, 100000), 3) == 1.960


def test_mean_interval_is_mean_plus_minus_t_times_standard_error():
    estimate = mean_interval([70.0, 74.0, 72.0])
    # s = 2, n = 3, t_{0.975, 2} = 4.302653
    assert estimate.mean == 72.0 and estimate.n == 3
    assert estimate.half_width == pytest.approx(4.302653 * 2 / 3 ** 0.5, rel=1e-6)
    single = mean_interval([5.0])
    assert single.mean == 5.0 and single.half_width is None


# ----------------------------------------------------------------------------------------------
# grid files


def _tiny_settings() -> dict:
    settings = {}
    for override in tiny_synthetic(clients=6, malicious=2, per_round=3, fixed_malicious=1):
        key, value = override.split("=", 1)
        settings[key] = yaml.safe_load(value)
    settings["rounds"] = 2
    settings["server.aggregator"] = "median"
    return settings


def write_grid(folder: Path, axes: dict, **extra) -> Path:
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump({"settings": _tiny_settings(), "axes": axes, **extra}, sort_keys=False))
    return path


def test_expand_applies_levels_excludes_combinations_and_names_folders_by_their_levels(tmp_path):
    grid = load_grid(str(write_grid(tmp_path, {
        "server.aggregator": ["median", "trimmed_mean"],
        "attack": {"backdoor": {"attack.type": "backdoor"}, "flip": {"attack.type": "label_flip"}},
        "seed": [0, 1],
    }, exclude=[{"attack": "flip", "server.aggregator": "trimmed_mean"}])))
    trials = expand(grid)
    assert len(trials) == 2 * 2 * 2 - 2
    # Seeds vary slowest, so a stopped sweep has whole seeds done.
    assert [t.levels["seed"] for t in trials] == ["0"] * 3 + ["1"] * 3
    first = trials[0]
    assert first.name == "server.aggregator-median__attack-backdoor__seed-0"
    assert first.config.server.aggregator == "median" and first.config.attack.type == "backdoor"
    assert first.config.rounds == 2 and first.config.data.dataset == "synthetic"
    flip = [t for t in trials if t.levels["attack"] == "flip"]
    assert {t.config.attack.type for t in flip} == {"label_flip"}
    assert all(t.levels["server.aggregator"] == "median" for t in flip)


@pytest.mark.parametrize(
    "grid, words",
    [
        ({"axes": {"server.agregator": ["median"]}}, ["server.agregator", "server.aggregator", "fix:"]),
        ({"axes": {"attack": {"x": {"attack.tpye": "backdoor"}}}}, ["attack.tpye", "attack.type", "fix:"]),
        ({"axes": {"server.aggregator": ["krumm"]}}, ["server.aggregator", "krumm", "fix: --set server.aggregator=krum"]),
        ({"axes": {"seed": [0]}, "exclude": [{"seeds": 0}]}, ["seeds", "not an axis", "fix:"]),
        ({"axes": {"seed": [0]}, "exclude": [{"seed": 5}]}, ["seed=5", "levels: 0", "fix:"]),
        ({"axes": {"seed": [0]}, "exlude": []}, ["exlude", "exclude", "fix:"]),
        ({"axes": {"seed": []}}, ["axes.seed", "non-empty list", "fix:"]),
        ({"axes": {"model_poisoning.type": ["attack_dpfl"]}},
         ["model_poisoning.type=attack_dpfl", "privacy.type=none", "fix: --set privacy.type=gaussian", "exclude"]),
        ({"axes": {"seed": [0]}, "report": {"metrics": ["accuracy"]}}, ["accuracy", "final_main_accuracy", "fix:"]),
        ({"axes": {"server.aggregator": ["median"], "attack.type": ["backdoor"], "seed": [0]},
          "report": {"rows": "atack", "axis": "server.aggregator"}},
         ["rows 'atack'", "allowed: attack.type", "fix: rows: attack.type"]),
        ({"axes": {"server.aggregator": ["median"], "attack.type": ["backdoor"], "seed": [0]},
          "report": {"rows": "server.aggregator", "axis": "server.aggregator"}},
         ["rows 'server.aggregator'", "allowed: attack.type", "columns are axis 'server.aggregator'"]),
        ({"axes": {"server.aggregator": ["median"], "attack.type": ["backdoor"], "seed": [0]},
          "report": {"panels": "seed"}}, ["panels 'seed'", "allowed: none", "fix: remove panels"]),
        ({"axes": {"server.aggregator": ["median"], "seed": [0]}, "report": {"rows": "seed"}},
         ["rows 'seed'", "two or more axes besides seed", "fix: remove rows"]),
        ({"axes": {"seed": [0]}, "report": {"row": "seed"}}, ["row", "metrics, axis, rows, panels", "fix:"]),
    ],
)
def test_a_bad_grid_is_one_line_naming_key_value_and_fix_before_anything_runs(tmp_path, capsys, grid, words):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"settings": _tiny_settings(), **grid}))
    out_dir = tmp_path / "out"
    assert main(["sweep", "--grid", str(path), "--out", str(out_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    for word in words:
        assert word in error
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--jobs", "0"], ["--jobs 0", "fix: --jobs 1"]),
        (["--gpus-per-trial", "0.5"], ["--gpus-per-trial", "fix: add --ray auto"]),
        (["--ray", "auto", "--jobs", "4"], ["--jobs 4", "fix: drop --jobs"]),
    ],
)
def test_bad_execution_flags_are_refused_before_anything_runs(tmp_path, capsys, flags, words):
    path = write_grid(tmp_path, {"seed": [0]})
    assert main(["sweep", "--grid", str(path), "--out", str(tmp_path / "out"), *flags]) == 2
    error = capsys.readouterr().err
    assert all(word in error for word in words)
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_the_trials_and_their_cost_without_running(tmp_path, capsys):
    path = write_grid(tmp_path, {"server.aggregator": ["median", "trimmed_mean"], "seed": [0, 1, 2]})
    assert main(["sweep", "--grid", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for trial in expand(load_grid(str(path))):
        assert trial.name in out
    assert "6 trials (0 done, 0 stopped, 6 new)" in out and "images through the model" in out
    assert not (tmp_path / "out").exists()


def test_the_preset_grid_expands_to_valid_trials():
    trials = expand(load_grid("poisoning-small"))
    assert len(trials) == 4 * 7 * 2 * 2
    dpfl = [t for t in trials if t.levels["attack"] == "attack_dpfl"]
    assert all(t.config.privacy.type == "gaussian" for t in dpfl)
    assert {t.config.server.aggregator for t in trials} == {
        "fedavg", "multikrum", "bulyan", "median", "trimmed_mean", "sparsefed", "robust_dpfl"}


# ----------------------------------------------------------------------------------------------
# running: local processes, Ray, resume, report

GRID_AXES = {"server.aggregator": ["median", "trimmed_mean"], "seed": [0, 1]}


def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sim", "sweep", *args]


def metrics_without_timing(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as stream:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(stream)]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    grid = write_grid(folder, GRID_AXES)
    out_dir = folder / "local"
    done = subprocess.run(sweep_command("--grid", str(grid), "--out", str(out_dir), "--jobs", "2"),
                          env=_environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    return grid, out_dir, done.stdout


def test_local_sweep_writes_a_run_folder_per_trial_and_the_report(local_sweep):
    grid, out_dir, printed = local_sweep
    trials = expand(load_grid(str(grid)))
    for trial in trials:
        folder = out_dir / "trials" / trial.name
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["rounds"] == 2 and summary["settings"]["server.aggregator"] == trial.levels["server.aggregator"]
        assert summary["settings"]["seed"] == int(trial.levels["seed"])
        assert json.loads((folder / "trial.json").read_text())["returncode"] == 0
        assert trial.name in printed
    with open(out_dir / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted(row["trial"] for row in rows) == sorted(t.name for t in trials)
    # The table's mean and interval are those of the seeds' values in results.csv.
    median = [float(r["final_main_accuracy"]) for r in rows if r["server.aggregator"] == "median"]
    estimate = mean_interval(median)
    table = (out_dir / "table.md").read_text()
    assert f"| median | 2 | {estimate.mean:.1f} ± {estimate.half_width:.1f} |" in table
    assert (out_dir / "mean_backdoor_accuracy-vs-server.aggregator.png").stat().st_size > 0
    # One axis besides the seeds: no heatmap.
    assert not list(out_dir.glob("heatmap_*"))


def test_report_rebuilds_csv_table_and_plots_from_the_finished_trials(local_sweep, capsys):
    _, out_dir, _ = local_sweep
    before = {name: (out_dir / name).read_text() for name in ("results.csv", "table.md")}
    for name in ("results.csv", "table.md", "mean_backdoor_accuracy-vs-server.aggregator.png"):
        (out_dir / name).unlink()
    assert main(["sweep", "--report", str(out_dir), "--metric", "final_test_loss", "--axis", "seed"]) == 0
    assert {name: (out_dir / name).read_text() for name in before} == before
    assert (out_dir / "final_test_loss-vs-seed.png").stat().st_size > 0
    assert main(["sweep", "--report", str(out_dir), "--axis", "attack"]) == 2
    assert "attack" in capsys.readouterr().err


def test_dry_run_estimates_time_from_finished_trials(local_sweep, capsys):
    grid, out_dir, _ = local_sweep
    assert main(["sweep", "--grid", str(grid), "--out", str(out_dir), "--dry-run", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 trials (4 done, 0 stopped, 0 new)" in out and "estimated time:" in out and "unknown" not in out


def test_a_sweep_folder_is_not_reused_without_resume(local_sweep, capsys):
    grid, out_dir, _ = local_sweep
    assert main(["sweep", "--grid", str(grid), "--out", str(out_dir)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_ray_sweep_gives_the_same_per_trial_metrics_as_local_processes(local_sweep, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from sim.jobs import RayBackend
    from sim.sweep import sweep

    grid_path, local_dir, _ = local_sweep
    grid = load_grid(str(grid_path))
    backend = RayBackend(address=None, num_cpus=2)  # a local Ray instance, started and stopped here
    monkeypatch.setenv("PYTHONPATH", _environment()["PYTHONPATH"])  # the workers import this tree's sim
    counts = sweep(grid, tmp_path / "ray", backend, echo=lambda text: None)
    assert counts == {"done": 0, "ran": 4, "failed": 0}
    for trial in expand(grid):
        ray_rows = metrics_without_timing(tmp_path / "ray" / "trials" / trial.name)
        assert ray_rows == metrics_without_timing(local_dir / "trials" / trial.name)
        assert len(ray_rows) == 2


def test_a_killed_sweep_resumes_without_redoing_finished_trials(tmp_path):
    grid = write_grid(tmp_path, {"server.aggregator": ["median", "trimmed_mean"], "seed": [0]})
    out_dir = tmp_path / "out"
    trials = expand(load_grid(str(grid)))
    first = out_dir / "trials" / trials[0].name
    process = subprocess.Popen(sweep_command("--grid", str(grid), "--out", str(out_dir), "--jobs", "1"),
                               env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (first / "trial.json").is_file():
        assert process.poll() is None and time.time() < deadline, "the first trial did not finish"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out_dir / "trials" / trials[1].name / "summary.json").is_file()
    stamps = {path.name: path.stat().st_mtime_ns for path in first.iterdir()}

    # Nothing left running writes into the folder once the launcher is gone.
    time.sleep(1.0)
    done = subprocess.run(sweep_command("--grid", str(grid), "--out", str(out_dir), "--resume"),
                          env=_environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "2 trials, 1 already done, 1 to run" in done.stdout
    assert {path.name: path.stat().st_mtime_ns for path in first.iterdir()} == stamps
    assert json.loads((out_dir / "trials" / trials[1].name / "summary.json").read_text())["rounds"] == 2
    # The resumed sweep gives what an uninterrupted run gives.
    fresh = tmp_path / "fresh"
    assert main(["run", "--config", str(out_dir / "trials" / trials[1].name / "config-input.yaml"),
                 "--out", str(fresh), "--no-progress", "--threads", "1"]) == 0
    assert metrics_without_timing(fresh) == metrics_without_timing(out_dir / "trials" / trials[1].name)


def test_resume_continues_a_stopped_trial_from_its_checkpoint(local_sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", _environment()["PYTHONPATH"])
    grid, local_dir, _ = local_sweep
    out_dir = tmp_path / "copy"
    shutil.copytree(local_dir, out_dir)
    stopped = out_dir / "trials" / expand(load_grid(str(grid)))[0].name
    (stopped / "summary.json").unlink()  # a run stopped after its last round, before its summary
    assert main(["sweep", "--grid", str(grid), "--out", str(out_dir), "--dry-run"]) == 0
    assert "4 trials (3 done, 1 stopped, 0 new)" in capsys.readouterr().out
    from sim.jobs import LocalBackend
    from sim.sweep import sweep

    counts = sweep(load_grid(str(grid)), out_dir, LocalBackend(1), resume=True, echo=lambda text: None)
    assert counts == {"done": 3, "ran": 1, "failed": 0}
    assert json.loads((stopped / "trial.json").read_text())["resumed"] is True
    assert metrics_without_timing(stopped) == metrics_without_timing(local_dir / "trials" / stopped.name)
    assert json.loads((stopped / "summary.json").read_text())["rounds"] == 2


# ----------------------------------------------------------------------------------------------
# heatmaps: a grid of two or more axes besides the seeds

HEATMAP_AXES = {
    "attack": {"backdoor": {"attack.type": "backdoor"}, "flip": {"attack.type": "label_flip"}},
    "server.aggregator": ["median", "trimmed_mean"],
    "seed": [0, 1],
}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def heatmap_sweep(tmp_path_factory):
    from sim.jobs import LocalBackend
    from sim.sweep import sweep

    folder = tmp_path_factory.mktemp("heatmap")
    grid = write_grid(folder, HEATMAP_AXES, exclude=[{"attack": "flip", "server.aggregator": "trimmed_mean"}],
                      report={"metrics": ["final_main_accuracy", "final_test_loss"], "axis": "server.aggregator"})
    out_dir = folder / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", _environment()["PYTHONPATH"])  # the trials import this tree's sim
        counts = sweep(load_grid(str(grid)), out_dir, LocalBackend(2), echo=lambda text: None)
    assert counts == {"done": 0, "ran": 6, "failed": 0}
    return grid, out_dir


def test_a_two_axis_grid_gets_a_heatmap_per_metric_whose_cells_are_the_means_over_seeds(heatmap_sweep):
    _, out_dir = heatmap_sweep
    results = _read_csv(out_dir / "results.csv")
    for metric in ("final_main_accuracy", "final_test_loss"):
        assert (out_dir / f"heatmap_{metric}.png").stat().st_size > 0
        cells = _read_csv(out_dir / f"heatmap_{metric}.csv")
        # rows: the first axis besides seed and the report's axis; columns: the report's axis; no panels
        assert [(c["row"], c["column"], c["panel"]) for c in cells] == [
            ("backdoor", "median", ""), ("backdoor", "trimmed_mean", ""), ("flip", "median", ""),
            ("flip", "trimmed_mean", "")]
        for cell in cells:
            values = [float(r[metric]) for r in results
                      if r["attack"] == cell["row"] and r["server.aggregator"] == cell["column"]]
            if not values:
                assert cell == {**cell, "n": "0", "mean": "", "half_width": "", "status": "excluded"}
                continue
            assert int(cell["n"]) == len(values) == 2 and cell["status"] == "value"
            mean = sum(values) / 2
            # Student-t 95% half-width for n = 2: t_{0.975, 1} * s / sqrt(2), s = |a - b| / sqrt(2)
            half = 12.706204736 * abs(values[0] - values[1]) / 2
            assert float(cell["mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(cell["half_width"]) == pytest.approx(half, rel=1e-6, abs=1e-9)
    assert [c["status"] for c in _read_csv(out_dir / "heatmap_final_main_accuracy.csv")].count("excluded") == 1


def test_the_heatmap_marks_unfinished_combinations_and_takes_its_rows_from_the_options(heatmap_sweep, tmp_path,
                                                                                       capsys):
    _, source = heatmap_sweep
    out_dir = tmp_path / "copy"
    shutil.copytree(source, out_dir)
    for seed in (0, 1):  # both seeds of one combination unfinished
        (out_dir / "trials" / f"attack-backdoor__server.aggregator-median__seed-{seed}" / "summary.json").unlink()
    assert main(["sweep", "--report", str(out_dir), "--axis", "attack"]) == 0
    cells = _read_csv(out_dir / "heatmap_final_main_accuracy.csv")
    status = {(c["row"], c["column"]): (c["status"], c["n"], c["mean"]) for c in cells}
    # --axis attack puts the attacks on the columns, so the rows are the server rules
    assert status == {
        ("median", "backdoor"): ("n/a", "0", ""), ("median", "flip"): ("value", "2", status[("median", "flip")][2]),
        ("trimmed_mean", "backdoor"): ("value", "2", status[("trimmed_mean", "backdoor")][2]),
        ("trimmed_mean", "flip"): ("excluded", "0", ""),
    }
    # The heatmap options of --report are checked like the grid's.
    assert main(["sweep", "--report", str(out_dir), "--rows", "seed"]) == 2
    assert "rows 'seed'" in capsys.readouterr().err
    assert main(["sweep", "--report", str(out_dir), "--panels", "attack"]) == 2
    assert "panels 'attack'" in capsys.readouterr().err


def test_heatmap_panels_are_the_remaining_axes_with_the_chosen_one_first():
    from sim.sweep import check_report, heatmap_cells, heatmap_layout

    axes = {"attack": ["a1", "a2"], "server.aggregator": ["r1", "r2", "r3"], "client": ["none", "leadfl"],
            "data.alpha": ["0.1", "1"], "seed": ["0", "1"]}
    names = list(axes)
    report = {"metrics": ["final_main_accuracy"], "axis": "server.aggregator", "rows": None, "panels": None}
    assert heatmap_layout(report, names) == ("attack", "server.aggregator", ["client", "data.alpha"])
    chosen = check_report({**report, "rows": "client", "panels": "data.alpha"}, names, "report")
    assert heatmap_layout(chosen, names) == ("client", "server.aggregator", ["data.alpha", "attack"])
    by_seed = heatmap_layout({**report, "axis": "seed"}, names)
    assert by_seed == ("server.aggregator", "attack", ["client", "data.alpha"])
    assert heatmap_layout({**report, "axis": "attack"}, ["attack", "seed"]) is None
    # Values over seeds per cell; a combination no trial has is excluded.
    record = {"axes": {"attack": ["a1", "a2"], "server.aggregator": ["r1"], "client": ["none", "leadfl"],
                       "seed": ["0", "1"]}, "replicate_axis": "seed",
              "trials": [{"name": f"t{a}{c}{s}", "levels": {"attack": a, "server.aggregator": "r1", "client": c,
                                                             "seed": s}}
                         for a in ("a1", "a2") for c in ("none", "leadfl") for s in ("0", "1")
                         if not (a == "a2" and c == "leadfl")]}
    rows = [{**t["levels"], "final_main_accuracy": 10.0 * i} for i, t in enumerate(record["trials"])]
    layout = heatmap_layout({**report, "rows": None}, list(record["axes"]))
    cells = heatmap_cells(rows, record, layout, "final_main_accuracy")
    assert [(c["panel"], c["row"], c["n"], c["mean"], c["status"]) for c in cells] == [
        ("client=none", "a1", 2, 5.0, "value"), ("client=none", "a2", 2, 45.0, "value"),
        ("client=leadfl", "a1", 2, 25.0, "value"), ("client=leadfl", "a2", 0, None, "excluded")]


def test_a_drop_metric_is_the_reference_trials_figure_minus_the_trials_own_paired_by_seed(heatmap_sweep, tmp_path,
                                                                                         capsys):
    _, source = heatmap_sweep
    out_dir = tmp_path / "copy"
    shutil.copytree(source, out_dir)
    assert main(["sweep", "--report", str(out_dir), "--reference", "attack=backdoor",
                 "--metric", "final_main_accuracy_drop"]) == 0
    results = _read_csv(out_dir / "results.csv")
    value = {(r["attack"], r["server.aggregator"], r["seed"]): float(r["final_main_accuracy"]) for r in results}
    cells = {(c["row"], c["column"]): c for c in _read_csv(out_dir / "heatmap_final_main_accuracy_drop.csv")}
    drops = [value[("backdoor", "median", s)] - value[("flip", "median", s)] for s in ("0", "1")]
    flip = cells[("flip", "median")]
    assert (flip["status"], flip["n"]) == ("value", "2")
    assert float(flip["mean"]) == pytest.approx(sum(drops) / 2, rel=1e-12, abs=1e-12)
    # the interval is the paired one: of the per-seed differences
    assert float(flip["half_width"]) == pytest.approx(12.706204736 * abs(drops[0] - drops[1]) / 2, rel=1e-6, abs=1e-9)
    assert float(cells[("backdoor", "median")]["mean"]) == 0.0
    assert cells[("flip", "trimmed_mean")]["status"] == "excluded"
    assert (out_dir / "heatmap_final_main_accuracy_drop.png").stat().st_size > 0
    # bad reference options are refused before anything is drawn, naming the value and the fix
    for argv, words in (
        (["--metric", "final_main_accuracy_drop"], "names none"),
        (["--reference", "attack=none", "--metric", "final_main_accuracy_drop"], "level 'none' is not a level"),
        (["--reference", "seed=0", "--metric", "final_main_accuracy_drop"], "axis 'seed' is not an axis"),
        (["--reference", "attack", "--metric", "final_main_accuracy_drop"], "must be AXIS=LEVEL"),
        (["--reference", "attack=backdoor", "--metric", "final_main_accuracy_dro"], "is not one of"),
    ):
        assert main(["sweep", "--report", str(out_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and "fix:" in err, err
