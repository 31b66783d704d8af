"""scripts/rounds_table.py: chosen rounds of several runs side by side, partial runs left empty."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rounds_table.py"
spec = importlib.util.spec_from_file_location("rounds_table", SCRIPT)
rounds_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rounds_table)


def _write_run(folder: Path, rows: list[tuple[int, float, float, int]]) -> Path:
    folder.mkdir(parents=True)
    lines = ["round,main_accuracy,backdoor_accuracy,test_loss,malicious_selected"]
    lines += [f"{r},{main},{backdoor},0.5,{malicious}" for r, main, backdoor, malicious in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_rounds_side_by_side_with_partial_runs_left_empty(tmp_path, capsys):
    full = _write_run(tmp_path / "a", [(0, 80.0, 100.0, 5), (1, 84.25, 90.0, 2), (2, 85.0, 70.5, 0)])
    partial = _write_run(tmp_path / "b", [(0, 81.0, 99.0, 5), (1, 84.0, 40.04, 2)])
    assert rounds_table.main([f"None={full}", f"LeadFL={partial}", "--rounds", "1-2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| round | malicious | None: main (%) | None: backdoor (%) | LeadFL: main (%) | LeadFL: backdoor (%) |"
    assert lines[2:] == ["| 1 | 2 | 84.2 | 90.0 | 84.0 | 40.0 |", "| 2 | 0 | 85.0 | 70.5 |  |  |"]


def test_attack_effect_columns_come_from_runs_that_measured_it(tmp_path, capsys):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "metrics.csv").write_text("round,main_accuracy,backdoor_accuracy,malicious_selected,attack_effect,"
                                        "attack_effect_ratio\n0,80.0,100.0,5,1.23456,\n1,81.0,90.0,0,1.2,0.97201\n")
    assert rounds_table.main([f"LeadFL={folder}", "--columns", "backdoor,effect,ratio"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| round | malicious | LeadFL: backdoor (%) | LeadFL: ‖δ‖ | LeadFL: ‖δ_t‖/‖δ_t-1‖ |"
    assert lines[2:] == ["| 0 | 5 | 100.0 | 1.235 |  |", "| 1 | 0 | 90.0 | 1.200 | 0.972 |"]


def test_bad_arguments_name_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rounds_table.main([f"x={tmp_path}"])
    assert "fix: e.g. None=runs/t1/None" in capsys.readouterr().err
    run = _write_run(tmp_path / "a", [(0, 80.0, 100.0, 5)])
    with pytest.raises(SystemExit):
        rounds_table.main([f"a={run}", "--columns", "loss"])
    assert "allowed: main, backdoor" in capsys.readouterr().err
