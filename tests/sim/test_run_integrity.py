"""Result folders keep their integrity: a refused call changes nothing, damaged or foreign state is
never taken as finished, limits are checked before work, vanishing values and non-decimal numbers
are refused, OS errors are one line naming the path, and readers stay inside their folder."""

from __future__ import annotations

import errno
import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*tiny_synthetic(clients=6, malicious=2, per_round=3, fixed_malicious=1), "server.aggregator=median",
        "rounds=1"]


def flags(*overrides: str) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


def digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def one_line_error(capsys, argv: list[str], *expected: str, code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def write_grid(path: Path, axes: dict, **extra) -> Path:
    settings = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in TINY)}
    path.write_text(yaml.safe_dump({"settings": settings, "axes": axes, **extra}))
    return path


# ----------------------------------------------------------------------------------------------
# a refused call leaves the folder as it was


def test_a_refused_compare_resume_keeps_compare_input_unchanged(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  none: {}\n  ldp: {client_defense.type: ldp}\n")
    out = tmp_path / "cmp"
    argv = ["compare", "--config", str(study), *flags(*TINY), "--out", str(out), "--no-progress", "--jobs", "1"]
    assert main(argv) == 0
    (out / "none" / "checkpoint.pt").unlink()
    (out / "ldp" / "checkpoint.pt").unlink()
    before = digest(out)
    one_line_error(capsys, [*argv, "--resume", "--set", "training.lr=0.5"], "other settings: training.lr")
    assert digest(out) == before
    # ... so the comparison still resumes from its folder alone.
    assert main(["compare", "--out", str(out), "--resume", "--no-progress"]) == 0


def test_compare_labels_that_are_equal_as_text_are_refused(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  1: {}\n  '1': {client_defense.type: ldp}\n")
    one_line_error(capsys, ["compare", "--config", str(study), *flags(*TINY), "--out", str(tmp_path / "c")],
                   "compare labels 1 and '1'", "fix: rename one of them")
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------------------------
# damaged or foreign state is never taken as finished


def test_a_sweep_resumed_with_another_grid_is_refused_unchanged(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", {"seed": [0, 1]})
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", str(grid), "--out", str(out)]) == 0
    before = digest(out)
    other = write_grid(tmp_path / "other.yaml", {"seed": [0]})
    one_line_error(capsys, ["sweep", "--grid", str(other), "--out", str(out), "--resume"],
                   "was started with another grid", f"fix: --grid {out / 'grid.yaml'}")
    assert digest(out) == before


def test_a_sweep_resumes_with_a_grid_edited_only_in_its_report(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", {"seed": [0, 1]})
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", str(grid), "--out", str(out)]) == 0
    edited = write_grid(tmp_path / "edited.yaml", {"seed": [0, 1]}, report={"metrics": ["final_test_loss"]})
    assert edited.read_text() != (out / "grid.yaml").read_text()
    assert main(["sweep", "--grid", str(edited), "--out", str(out), "--resume"]) == 0
    assert "2 already done, 0 to run" in capsys.readouterr().out
    assert (out / "grid.yaml").read_text() == edited.read_text()  # the record is the grid now in force
    assert (out / "final_test_loss-vs-seed.png").is_file()


def test_damaged_sweep_trials_run_again_and_stay_out_of_the_report(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", {"seed": [0, 1]})
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", str(grid), "--out", str(out)]) == 0
    trials = sorted((out / "trials").iterdir())
    for trial in trials:
        (trial / "checkpoint.pt").unlink()
    finished = (trials[0] / "metrics.csv").read_text()
    (trials[0] / "metrics.csv").write_text(finished.splitlines(keepends=True)[0])  # truncated: header only
    summary = json.loads((trials[1] / "summary.json").read_text())
    summary["final_main_accuracy"] = 99.9  # edited
    (trials[1] / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()

    assert main(["sweep", "--report", str(out)]) == 0
    report = capsys.readouterr().out
    assert "report: 0 of 2 trials finished" in report
    assert report.count("left out of the report") == 2
    assert "99.9" not in (out / "table.md").read_text() + (out / "results.csv").read_text()

    assert main(["sweep", "--grid", str(grid), "--out", str(out), "--dry-run"]) == 0
    assert "2 trials (0 done, 0 stopped, 2 new)" in capsys.readouterr().out
    assert main(["sweep", "--grid", str(grid), "--out", str(out), "--resume"]) == 0
    output = capsys.readouterr().out
    assert output.count("it runs again from the start") == 2
    assert "report: 2 of 2 trials finished" in output
    def without_wall_time(text: str) -> list[list[str]]:
        rows = [line.split(",") for line in text.splitlines()]
        where = rows[0].index("wall_time_s")
        return [row[:where] + row[where + 1:] for row in rows]

    assert without_wall_time((trials[0] / "metrics.csv").read_text()) == without_wall_time(finished)


# ----------------------------------------------------------------------------------------------
# limits before work


def test_a_huge_grid_is_refused_at_once(tmp_path, capsys):
    levels = list(range(10))
    grid = write_grid(tmp_path / "grid.yaml", {f"training.local_steps": [s + 1 for s in levels], "seed": levels,
                                               "rounds": [s + 1 for s in levels],
                                               "eval.batch_size": [s + 1 for s in levels],
                                               "training.batch_size": [s + 1 for s in levels],
                                               "clients.clients_per_round": [s + 1 for s in levels],
                                               "training.momentum": [s / 10 for s in levels]})
    started = time.perf_counter()
    one_line_error(capsys, ["sweep", "--grid", str(grid), "--dry-run"], "has 10000000 trials, more than --max-trials "
                   "10000", "--max-trials 10000000")
    assert time.perf_counter() - started < 30  # counted, not expanded (expanding takes hours)


def test_max_trials_can_be_raised_and_lowered(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", {"seed": [0, 1, 2]})
    one_line_error(capsys, ["sweep", "--grid", str(grid), "--dry-run", "--max-trials", "2"], "has 3 trials")
    assert main(["sweep", "--grid", str(grid), "--dry-run", "--max-trials", "3"]) == 0


@pytest.mark.parametrize("setting, expected", [
    ("clients.num_clients=1000000000000", "exceeds the 300 training images"),
    ("rounds=1000000000000000000000000000000", "beyond the largest whole number"),
    ("training.local_steps=123456789012345678901234567890", "beyond the largest whole number"),
])
def test_sizes_are_bounded_before_anything_is_allocated(tmp_path, capsys, setting, expected):
    one_line_error(capsys, ["run", *flags(*TINY, setting), "--out", str(tmp_path / "r")], expected)
    assert not (tmp_path / "r").exists()


def test_a_huge_seed_range_is_refused(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  none: {}\n")
    one_line_error(capsys, ["compare", "--config", str(study), *flags(*TINY), "--seeds", "0-99999999999", "--out",
                            str(tmp_path / "c")], "asks for 100000000000 seeds, more than the 10000")


def test_a_yaml_alias_bomb_is_refused_without_building_it(tmp_path, capsys):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 25):
        previous, name = chr(96 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    one_line_error(capsys, ["run", "--config", str(path), "--out", str(tmp_path / "r")], "more than 100 alias")
    one_line_error(capsys, ["sweep", "--grid", str(path), "--dry-run"], "more than 100 alias")


# ----------------------------------------------------------------------------------------------
# values that vanish, numbers that are not decimal


@pytest.mark.parametrize("setting", [
    "training.lr=1e-320", "privacy.clip=1e-320", "privacy.epsilon=1e-320", "privacy.delta=1e-320",
    "server.sparsefed.clip=1e-320", "client_defense.q=5e-324",
])
def test_a_float_setting_that_vanishes_in_float32_is_refused(tmp_path, capsys, setting):
    path = setting.split("=")[0]
    one_line_error(capsys, ["run", *flags(*TINY, setting), "--out", str(tmp_path / "r")],
                   f"{path}=", "below float32's smallest normal number", f"fix: --set {path}=")


@pytest.mark.parametrize("text, read_as", [("0x10", "16"), ("010", "8"), ("1_0", "10"),
                                           ("1_0.5", "10.5"), ("1:30", "90")])
def test_numbers_yaml_1_1_reads_in_other_bases_are_refused(tmp_path, capsys, text, read_as):
    one_line_error(capsys, ["run", *flags(*TINY), "--set", f"seed={text}", "--out", str(tmp_path / "r")],
                   f"'{text}'", f"would read it as {read_as}", "fix:")
    config = tmp_path / "c.yaml"
    config.write_text(f"seed: {text}\n")
    one_line_error(capsys, ["run", "--config", str(config), "--out", str(tmp_path / "r")], f"'{text}'")


# ----------------------------------------------------------------------------------------------
# OS errors and damaged files: one line naming the path


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied")])
def test_an_os_error_on_output_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, code, words):
    import sim.io

    real = sim.io.os.replace

    def failing(source, target):
        if str(target).endswith("metrics.csv"):
            raise OSError(code, "simulated", str(target))
        return real(source, target)

    monkeypatch.setattr(sim.io.os, "replace", failing)
    one_line_error(capsys, ["run", *flags(*TINY), "--out", str(tmp_path / "r"), "--no-progress"],
                   str(tmp_path / "r" / "metrics.csv"), words, "fix:")


def test_a_name_longer_than_the_file_system_allows_is_refused_before_writing(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", {"seed": [0], "attack.target_label": {"x" * 300: {}}})
    one_line_error(capsys, ["sweep", "--grid", str(grid), "--out", str(tmp_path / "s")], "longer than the")
    assert not (tmp_path / "s").exists()


def test_a_binary_grid_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_bytes(bytes(range(256)))
    one_line_error(capsys, ["sweep", "--grid", str(path), "--dry-run"], "is not text")


@pytest.mark.parametrize("name", ["sweep.json", "trial.json", "summary.json", "config.yaml"])
def test_damaged_side_files_of_a_sweep_are_one_line_or_a_rerun(tmp_path, capsys, name):
    grid = write_grid(tmp_path / "grid.yaml", {"seed": [0]})
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", str(grid), "--out", str(out)]) == 0
    target = out / name if name == "sweep.json" else next((out / "trials").iterdir()) / name
    target.write_text(target.read_text()[:20])
    capsys.readouterr()
    code = main(["sweep", "--report", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if name == "sweep.json":
        assert code == 2 and "cannot be read as a sweep record" in captured.err
    elif name == "trial.json":
        assert code == 0 and "report: 1 of 1 trials finished" in captured.out
    else:
        assert code == 0 and "left out of the report" in captured.out


# ----------------------------------------------------------------------------------------------
# readers stay inside the folder they were given


def test_plot_refuses_a_comparison_that_points_outside_it(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  none: {}\n")
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(study), *flags(*TINY), "--out", str(out), "--no-progress"]) == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "metrics.csv").write_text((out / "none" / "metrics.csv").read_text())
    (victim / "config.yaml").write_text((out / "none" / "config.yaml").read_text())
    comparison = json.loads((out / "comparison.json").read_text())
    comparison["variants"]["none"]["folder"] = "../victim"
    (out / "comparison.json").write_text(json.dumps(comparison))
    before = digest(victim)
    one_line_error(capsys, ["plot", str(out)], "'../victim'", "leads outside")
    assert digest(victim) == before


def test_a_sweep_trial_folder_linked_outside_is_refused_before_it_runs(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", {"seed": [0]})
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", str(grid), "--out", str(out)]) == 0
    trial = next((out / "trials").iterdir())
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine\n")
    for path in sorted(trial.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    trial.rmdir()
    trial.symlink_to(victim)
    before = digest(victim)
    one_line_error(capsys, ["sweep", "--grid", str(grid), "--out", str(out), "--resume"], "leads outside",
                   "nothing was run or written", "fix: remove the link")
    assert digest(victim) == before


def test_a_comparison_run_folder_linked_outside_is_refused_before_it_runs(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  none: {}\n")
    out = tmp_path / "cmp"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (out / "none").symlink_to(victim)
    one_line_error(capsys, ["compare", "--config", str(study), *flags(*TINY), "--out", str(out), "--no-progress"],
                   "leads outside", "fix: remove the link")
    assert list(victim.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# plot redraws only what it has checked


def _finished_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    assert main(["run", *flags(*TINY, "rounds=2"), "--out", str(out), "--no-progress"]) == 0
    return out


def test_plot_refuses_a_finished_run_whose_metrics_were_cut(tmp_path, capsys):
    out = _finished_run(tmp_path)
    metrics = out / "metrics.csv"
    metrics.write_text(metrics.read_text()[:-40])
    one_line_error(capsys, ["plot", str(out)], "does not hold an intact finished run", "metrics.csv")


def test_plot_refuses_a_cut_row_of_an_unfinished_run(tmp_path, capsys):
    out = _finished_run(tmp_path)
    for name in ("summary.json", "manifest.json"):
        (out / name).unlink()
    metrics = out / "metrics.csv"
    metrics.write_text(metrics.read_text().rstrip("\n").rsplit(",", 3)[0] + "\n")
    one_line_error(capsys, ["plot", str(out)], "line 3 does not have one cell per column")


def test_plot_redraws_a_sealed_run_and_keeps_it_sealed(tmp_path, capsys):
    out = _finished_run(tmp_path)
    (out / "accuracy.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "accuracy.png").is_file()
    assert main(["run", *flags(*TINY, "rounds=2"), "--out", str(out), "--resume", "--no-progress"]) == 0


# ----------------------------------------------------------------------------------------------
# YAML that is not a settings file


@pytest.mark.parametrize("text", ["[" * 10_000 + "]" * 10_000, "{a: " * 3_000 + "1" + "}" * 3_000])
def test_deeply_nested_yaml_is_one_line(tmp_path, capsys, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    one_line_error(capsys, ["run", "--config", str(path), "--out", str(tmp_path / "r")], "nested more than 64",
                   "fix:")
    one_line_error(capsys, ["sweep", "--grid", str(path), "--dry-run"], "nested more than 64")


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("3\n", "int"), ("hello\n", "str")])
def test_a_settings_file_that_is_not_a_mapping_says_the_fix(tmp_path, capsys, text, kind):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    one_line_error(capsys, ["run", "--config", str(path), "--out", str(tmp_path / "r")], "must be a mapping",
                   "fix:")


def test_a_leadfl_run_without_the_extension_is_refused_before_any_folder_or_data(tmp_path, capsys, monkeypatch):
    import builtins
    import sys

    real_import = builtins.__import__

    def no_extension(name, *args, **kwargs):
        if name == "leadfl_ext" or name.startswith("leadfl_ext."):
            raise ImportError("libleadfl missing (simulated)")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "leadfl_ext", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_extension)
    out = tmp_path / "run"
    argv = ["run", "--out", str(out), "--no-progress",
            *flags(*TINY, "client_defense.type=leadfl", "client_defense.variant=original")]
    one_line_error(capsys, argv, "needs the leadfl_ext package", "pip install -e .")
    assert not out.exists()
    # the settings alone still validate (a dry run needs no library)
    from sim.config import load_config, validate
    validate(load_config(overrides=[*TINY, "client_defense.type=leadfl"]))
