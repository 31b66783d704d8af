"""One writer per folder: while a process holds a run, comparison or sweep folder, every command
that would write it is refused with one line naming the holder, and leaves the folder as it was;
the OS drops the lock when the holder dies, kill -9 included."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
TINY = [*tiny_synthetic(clients=6, malicious=2, per_round=3, fixed_malicious=1), "server.aggregator=median",
        "rounds=1"]
HOLD = ("import sys, time; from sim.io import FolderLock; FolderLock(sys.argv[1]).__enter__(); "
        "print('held', flush=True); time.sleep(120)")


def flags(*overrides: str) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


def digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


class Holder:
    """Another process holding the lock of `folder`."""

    def __init__(self, folder: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, env=env,
                                        text=True)
        assert self.process.stdout.readline().strip() == "held"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def holder():
    holders = []

    def hold(folder: Path) -> Holder:
        holders.append(Holder(folder))
        return holders[-1]

    yield hold
    for item in holders:
        if item.process.poll() is None:
            item.kill()


def refused(capsys, argv: list[str], folder: Path, pid: int) -> None:
    before = digest(folder)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"is being written by another process (PID {pid}, started " in err, err
    assert "fix: wait for that process to end" in err
    assert digest(folder) == before


def test_a_second_run_in_a_held_folder_is_refused_and_runs_after_the_holder_dies(tmp_path, capsys, holder):
    out = tmp_path / "run"
    out.mkdir()
    held = holder(out)
    argv = ["run", *flags(*TINY), "--out", str(out), "--no-progress"]
    refused(capsys, argv, out, held.process.pid)
    assert list(out.iterdir()) == []
    held.kill()  # kill -9: the OS drops the lock, nothing stale is left
    assert main(argv) == 0
    assert (out / "manifest.json").is_file()


def test_resume_of_a_held_run_is_refused(tmp_path, capsys, holder):
    out = tmp_path / "run"
    assert main(["run", *flags(*TINY), "--out", str(out), "--no-progress"]) == 0
    held = holder(out)
    refused(capsys, ["run", "--out", str(out), "--resume", "--set", "rounds=2", "--no-progress"], out,
            held.process.pid)


def compare_argv(tmp_path: Path, out: Path) -> list[str]:
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  none: {}\n  ldp: {client_defense.type: ldp}\n")
    return ["compare", "--config", str(study), *flags(*TINY), "--out", str(out), "--no-progress"]


def test_compare_in_a_held_folder_is_refused(tmp_path, capsys, holder):
    out = tmp_path / "cmp"
    argv = compare_argv(tmp_path, out)
    assert main(argv) == 0
    held = holder(out)
    refused(capsys, [*argv, "--resume"], out, held.process.pid)


def test_a_sweep_in_a_held_folder_is_refused_and_so_is_its_report(tmp_path, capsys, holder):
    grid = tmp_path / "grid.yaml"
    settings = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in TINY)}
    grid.write_text(yaml.safe_dump({"settings": settings, "axes": {"seed": [0]}}))
    out = tmp_path / "sweep"
    out.mkdir()
    held = holder(out)
    refused(capsys, ["sweep", "--grid", str(grid), "--out", str(out)], out, held.process.pid)
    held.kill()
    assert main(["sweep", "--grid", str(grid), "--out", str(out)]) == 0
    held = holder(out)
    refused(capsys, ["sweep", "--grid", str(grid), "--out", str(out), "--resume"], out, held.process.pid)
    refused(capsys, ["sweep", "--report", str(out)], out, held.process.pid)


def test_plot_of_a_held_folder_is_refused(tmp_path, capsys, holder):
    out = tmp_path / "run"
    assert main(["run", *flags(*TINY), "--out", str(out), "--no-progress"]) == 0
    held = holder(out)
    refused(capsys, ["plot", str(out)], out, held.process.pid)


def test_a_run_inside_a_held_comparison_is_refused(tmp_path, capsys, holder):
    # Each folder has its own lock: a comparison's run folder is held by whichever process writes it.
    out = tmp_path / "cmp"
    argv = compare_argv(tmp_path, out)
    assert main(argv) == 0
    run_dir = out / "ldp"
    held = holder(run_dir)
    before = digest(run_dir)
    assert main([*argv, "--resume", "--set", "rounds=2", "--jobs", "1"]) == 2
    assert f"{run_dir} is being written by another process (PID {held.process.pid}" in capsys.readouterr().err
    assert digest(run_dir) == before
