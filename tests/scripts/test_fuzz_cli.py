"""scripts/fuzz_cli.py: its classifier, its case list, and a handful of cases against this tree."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "fuzz_cli.py"
spec = importlib.util.spec_from_file_location("fuzz_cli", SCRIPT)
fuzz_cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz_cli)


def test_clean_outcomes():
    assert fuzz_cli.classify(0, "done\n", "") == ("clean", "exit 0")
    assert fuzz_cli.classify(2, "", "note: x\nerror: rounds=0x10 is bad; fix: --set rounds=80\n")[0] == "clean"
    assert fuzz_cli.classify(1, "", "error: 1 of 2 trials failed\n\n")[0] == "clean"  # exit 1 needs no fix


def test_other_outcomes():
    assert fuzz_cli.classify(None, "", "", timed_out=True) == ("other", "timeout")
    assert fuzz_cli.classify(None, "", "", exception="MemoryError: ") == ("other", "MemoryError")
    assert fuzz_cli.classify(None, "", "", exception="UnicodeDecodeError: 'utf-8'") == (
        "other", "exception UnicodeDecodeError")
    traceback = "Traceback (most recent call last):\n  File x\nValueError: y\nerror: z; fix: w\n"
    assert fuzz_cli.classify(2, "", traceback) == ("other", "Traceback in output")
    assert fuzz_cli.classify(2, "", "error: bad value\n") == ("other", "error line without 'fix' (exit 2)")
    assert fuzz_cli.classify(2, "", "error: bad; fix: a\nsecond line\n")[1].startswith("multi-line error")
    assert fuzz_cli.classify(2, "", "usage: leadfl-sim\nleadfl-sim: error: x\n")[0] == "other"
    assert fuzz_cli.classify(3, "", "error: x; fix: y\n") == ("other", "exit code 3")
    assert fuzz_cli.classify(0, "Traceback (most recent call last):\n", "")[0] == "other"


def test_case_list_is_deterministic_and_covers_every_surface():
    cases = fuzz_cli.build_cases(0)
    assert cases == fuzz_cli.build_cases(0)
    assert 300 <= len(cases) <= 600
    assert {case["category"] for case in cases} == set(fuzz_cli.CATEGORIES)
    assert len({case["id"] for case in cases}) == len(cases)
    chosen = fuzz_cli.select_cases(cases, 40, seed=0, only=None)
    assert chosen == fuzz_cli.select_cases(cases, 40, seed=0, only=None)
    assert {case["category"] for case in chosen} == set(fuzz_cli.CATEGORIES)
    assert fuzz_cli.display_argv(["run", *fuzz_cli.TINY, "--out", "x" * 300]).startswith("run <tiny> --out xxx")


def test_a_handful_of_cases_against_this_tree(tmp_path, capsys):
    out = tmp_path / "fuzz.json"
    only = r"^set/rounds='(0x10|1e-320)'$|^paths/compare --seeds '5-1'$|^yaml/run --config unknown_top_key$"
    assert fuzz_cli.main(["--source", str(REPO), "--only", only, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    records = {record["sub"]: record for record in report["cases"]}
    assert set(records) == {"rounds='0x10'", "rounds='1e-320'", "compare --seeds '5-1'", "run --config unknown_top_key"}
    for record in records.values():
        assert (record["class"], record["exit"], record["unsafe"]) == ("clean", 2, False), record
        assert record["error_line"].startswith("error: ")
    assert report["counts"]["total"] == {"cases": 4, "clean": 4, "other": 0, "unsafe": 0}
    assert "category" in capsys.readouterr().out
