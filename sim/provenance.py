"""What ran a run: the facts of each process that ran a segment of its rounds, observed by that
process when it started, and never filled in later.

A run that is stopped and resumed has several segments; each records the rounds it ran
(`rounds: [first, end)`) and its facts: the code (git commit of the source tree and whether its
code files had uncommitted changes), the Python, torch and numpy versions, torch's CPU thread
count, the CPU (model name, family, model, stepping, flags), the GPU and the device. A fact that
could not be observed, or that an older version of the simulator did not record, reads
`NOT_RECORDED`: nothing is ever back-filled from the machine that reads a run.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded"
# The facts a resume compares (sim.resume.check_machine): they change a run's numbers.
CHECKED_FACTS = ("torch", "threads", "cpu", "gpu", "device")
# The source folders whose uncommitted changes make a run's code "dirty" (results folders are not code).
CODE_PATHS = ("sim", "leadfl_ext", "csrc", "setup.py", "configs")
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_SOURCE_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """{"commit": the source tree's git commit, "dirty": whether its code files differ from it};
    NOT_RECORDED for both outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": NOT_RECORDED, "dirty": NOT_RECORDED}
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return {"commit": commit.strip(), "dirty": NOT_RECORDED if status is None else bool(status.strip())}


def cpu_facts() -> dict[str, Any]:
    """The CPU's model name, family, model, stepping and flags (Linux /proc/cpuinfo, first CPU)."""
    wanted = {"model name": "cpu", "cpu family": "cpu_family", "model": "cpu_model", "stepping": "cpu_stepping",
              "flags": "cpu_flags"}
    facts: dict[str, Any] = {name: NOT_RECORDED for name in wanted.values()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        facts["cpu"] = platform.processor() or platform.machine() or NOT_RECORDED
        return facts
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        if key.strip() in wanted:
            facts[wanted[key.strip()]] = value.strip()
    return facts


def observe(device) -> dict[str, Any]:
    """This process's facts, now."""
    import numpy
    import torch

    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        **code_version(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "threads": torch.get_num_threads(),
        **cpu_facts(),
        "gpu": gpu,
        "device": str(device),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def checked(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts a resume compares, from a segment's facts."""
    return {key: facts.get(key, NOT_RECORDED) for key in CHECKED_FACTS}


def segment(first_round: int, end_round: int, facts: dict[str, Any]) -> dict[str, Any]:
    return {"rounds": [first_round, end_round], **facts}


def unrecorded_segment(first_round: int, end_round: int) -> dict[str, Any]:
    """Rounds run by a version of the simulator that kept no per-segment facts."""
    return {"rounds": [first_round, end_round], "facts": NOT_RECORDED}


def common_fact(segments: list[dict[str, Any]], key: str) -> Any:
    """The value of `key` shared by every segment, else NOT_RECORDED (missing somewhere) or
    'mixed (see provenance)' (segments disagree)."""
    values = [item.get(key, NOT_RECORDED) for item in segments]
    if not values or NOT_RECORDED in values:
        return NOT_RECORDED
    return values[0] if all(value == values[0] for value in values) else "mixed (see provenance)"
