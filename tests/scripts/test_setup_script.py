"""scripts/setup.sh: a finished setup is not redone, and a failing dataset install is retried
after `apt-get update`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"


def run_setup(**environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **environment}
    return subprocess.run(["bash", str(SETUP)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def installed_from_this_tree() -> bool:
    probe = "import os, leadfl_ext; print(os.path.dirname(os.path.dirname(os.path.realpath(leadfl_ext.__file__))))"
    found = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True, text=True)
    return found.returncode == 0 and Path(found.stdout.strip()) == REPO and (REPO / "build" / "setup-stamp").is_file()


needs_finished_setup = pytest.mark.skipif(
    not installed_from_this_tree(), reason="needs a finished `bash scripts/setup.sh` of this tree (CI runs it first)"
)


@needs_finished_setup
def test_a_finished_setup_is_not_redone_and_says_each_step():
    done = run_setup()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("setup: ") for line in lines) and len(lines) >= 4
    assert any("did not change" in line for line in lines)
    assert not any("building and installing" in line for line in lines)


@needs_finished_setup
def test_the_interpreter_s_other_name_does_not_rebuild():
    """`python` and `python3` (one interpreter, two names in its folder) share the build: a setup
    with either after one with the other must not rebuild."""
    names = [Path(sys.executable).with_name(name) for name in ("python", "python3")]
    names = [name for name in names if name.exists()]
    if len(names) < 2:
        pytest.skip(f"{Path(sys.executable).parent} does not hold both python and python3")
    for name in names:
        done = run_setup(PYTHON=str(name))
        assert done.returncode == 0, done.stderr
        assert any("did not change" in line for line in done.stdout.splitlines()), (name, done.stdout)


@needs_finished_setup
@pytest.mark.skipif(os.geteuid() != 0, reason="the dataset install runs apt-get as root only")
def test_a_failing_dataset_install_is_retried_after_apt_get_update(tmp_path):
    # A stub apt-get whose install fails until `apt-get update` ran once.
    calls = tmp_path / "calls"
    stub = tmp_path / "bin" / "apt-get"
    stub.parent.mkdir()
    stub.write_text(
        "#!/bin/sh\n"
        f'echo "$1" >> {calls}\n'
        f'if [ "$1" = update ]; then touch {tmp_path}/updated; exit 0; fi\n'
        f'if [ -e {tmp_path}/updated ]; then exit 0; fi\n'
        'echo "E: Unable to locate package dataset-fashion-mnist"; exit 100\n'
    )
    stub.chmod(0o755)
    done = run_setup(PATH=f"{stub.parent}{os.pathsep}{os.environ['PATH']}", LEADFL_DATASET_DIR=str(tmp_path / "missing"))
    assert done.returncode == 0, done.stderr
    called = calls.read_text().split()
    # The install that succeeds comes after an update: at once where the package lists are empty,
    # else as the retry of a failed install.
    assert called[-1] == "install" and "update" in called[:-1]
    if called[0] == "install":
        assert "apt-get update, then installing dataset-fashion-mnist again" in done.stdout
    assert "failed" not in done.stderr
