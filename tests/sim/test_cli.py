"""The command line, called in-process through `sim.cli.main`."""

from __future__ import annotations

import json
import re

import pytest

from sim.cli import main
from sim.config import list_presets
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*tiny_synthetic(clients=6, malicious=2, per_round=3, fixed_malicious=1), "server.aggregator=median",
        "rounds=2"]


def tiny_flags(*extra: str) -> list[str]:
    flags = []
    for override in [*TINY, *extra]:
        flags += ["--set", override]
    return flags




def test_list_presets_prints_each_name_with_its_description(capsys):
    assert main(["list-presets"]) == 0
    out = capsys.readouterr().out
    for name, description in list_presets():
        assert name in out and description in out
    assert "table1-fmnist" in out and "demo" in out


def test_run_writes_the_run_folder_and_prints_the_summary_and_plot_path(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["run", *tiny_flags(), "--seed", "3", "--threads", "1", "--out", str(out_dir), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "main accuracy (final)" in printed and "backdoor accuracy (avg)" in printed
    assert f"plot: {out_dir / 'accuracy.png'}" in printed
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["settings"]["seed"] == 3

    # `plot` redraws from the folder alone.
    (out_dir / "accuracy.png").unlink()
    assert main(["plot", str(out_dir)]) == 0
    assert (out_dir / "accuracy.png").is_file()


def test_run_resume_extends_a_stopped_run(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["run", *tiny_flags(), "--out", str(out_dir), "--no-progress"]) == 0
    assert main(["run", *tiny_flags(), "--rounds", "3", "--out", str(out_dir), "--resume", "--no-progress"]) == 0
    assert json.loads((out_dir / "summary.json").read_text())["rounds"] == 3


def test_compare_runs_each_variant_and_writes_the_table(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(
        "description: tiny comparison\n"
        "compare:\n"
        "  no defense: {client_defense.type: none}\n"
        "  LDP: {client_defense.type: ldp, client_defense.noise_scale: 0.1}\n"
    )
    out_dir = tmp_path / "cmp"
    assert main(["compare", "--config", str(study), *tiny_flags(), "--out", str(out_dir), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| no defense |" in printed and "| LDP |" in printed
    assert f"plot: {out_dir / 'comparison.png'}" in printed

    table = (out_dir / "table.md").read_text()
    assert "main accuracy, final (%)" in table and "backdoor accuracy, average (%)" in table
    assert "backdoor accuracy, final (%)" in table
    assert table.count("\n| ") == 4  # header, separator, two variants
    comparison = json.loads((out_dir / "comparison.json").read_text())
    assert list(comparison["variants"]) == ["no defense", "LDP"]
    assert comparison["variants"]["LDP"]["overrides"] == ["client_defense.type=ldp", "client_defense.noise_scale=0.1"]
    assert (out_dir / "comparison.png").is_file()
    for folder in ("no-defense", "LDP"):
        assert (out_dir / folder / "metrics.csv").is_file()
    # Variants differ only in the client defense, so they faced the same clients every round.
    selections = [
        [line.split(",")[5] for line in (out_dir / folder / "metrics.csv").read_text().splitlines()]
        for folder in ("no-defense", "LDP")
    ]
    assert selections[0] == selections[1]

    # Resuming a finished comparison re-reads it, and `plot` redraws the comparison figure.
    assert main(["compare", "--config", str(study), *tiny_flags(), "--out", str(out_dir), "--resume", "--no-progress"]) == 0
    (out_dir / "comparison.png").unlink()
    assert main(["plot", str(out_dir)]) == 0
    assert (out_dir / "comparison.png").is_file()


def test_compare_resume_reads_back_finished_variants_whose_checkpoints_were_removed(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  no defense: {client_defense.type: none}\n  LDP: {client_defense.type: ldp}\n")
    out_dir = tmp_path / "cmp"
    flags = ["compare", "--config", str(study), *tiny_flags(), "--out", str(out_dir), "--no-progress"]
    assert main(flags) == 0
    table = (out_dir / "table.md").read_text()
    for folder in ("no-defense", "LDP"):
        (out_dir / folder / "checkpoint.pt").unlink()
    # A retrain or a rewrite would give the run files new inode change times.
    stamps = {path: path.stat().st_ctime_ns for folder in ("no-defense", "LDP") for path in (out_dir / folder).iterdir()}
    (out_dir / "table.md").unlink()

    assert main([*flags, "--resume"]) == 0
    assert (out_dir / "table.md").read_text() == table
    assert {path: path.stat().st_ctime_ns for path in stamps} == stamps

    # Other settings, or more rounds, cannot be read back and have no checkpoint to go on from.
    capsys.readouterr()
    assert main([*flags, "--resume", "--set", "training.lr=0.123"]) == 2
    assert re.search(r"other settings: training.lr \(saved [0-9.]+, requested 0.123\).*fix:", capsys.readouterr().err)
    assert main([*flags, "--resume", "--rounds", "3"]) == 2
    assert re.search(r"no checkpoint.pt to continue it from .*fix:", capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["run", "--set", "client_defense.type=leadf"],
         "client_defense.type='leadf' is not one of none, ldp, flwbc, leadfl; fix: --set client_defense.type=leadfl"),
        (["run", "--set", "client_defence.type=leadfl"], "did you mean 'client_defense.type'?"),
        (["run", "--preset", "tabel1-fmnist"], "did you mean 'table1-fmnist'?"),
        (["run", "--resume"], "--resume needs the folder of the stopped run; fix: add --out DIR"),
        (["compare", "--set", "rounds=1"], "has no compare: section"),
        (["plot", "/nonexistent/folder"], "holds neither comparison.json nor metrics.csv"),
    ],
)
def test_bad_input_exits_2_with_a_one_line_message(argv, expected, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ")
    assert expected in captured.err
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


def test_missing_dataset_is_reported_without_a_traceback(tmp_path, capsys):
    argv = ["run", "--set", "data.dataset=mnist", "--set", f"data.data_dir={tmp_path}", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err
