"""A finished run's seal: `manifest.json`, written last, holds the sha256 of each of the run's
files, the number of rows in `metrics.csv` and the rounds. A folder counts as a finished run only
if its files agree with it; every read-back (`run --resume`, `compare --resume`, sweeps) checks
it and refuses (or reruns) a folder whose files were truncated, edited or replaced.

A folder finished before manifests existed has none; `sim.reporting.read_finished` reads it back
only if its own files agree with each other, and never rewrites it to add one.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from sim.errors import ConfigError
from sim.io import (ATTACK_EFFECT_PLOT_FILE, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, PLOT_FILE, SUMMARY_FILE,
                    write_atomic)

MANIFEST_FORMAT = 1
SEALED_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, PLOT_FILE, ATTACK_EFFECT_PLOT_FILE)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metric_rows(path: Path) -> int:
    with open(path, newline="") as stream:
        return sum(1 for _ in csv.DictReader(stream))


def write_manifest(out_dir: Path, rounds: int) -> None:
    out_dir = Path(out_dir)
    files = {name: _digest(out_dir / name) for name in SEALED_FILES if (out_dir / name).is_file()}
    record = {"format": MANIFEST_FORMAT, "rounds": rounds, "metrics_rows": _metric_rows(out_dir / METRICS_FILE),
              "files": files}
    write_atomic(out_dir / MANIFEST_FILE, json.dumps(record, indent=2) + "\n")


def damaged(out_dir: Path, what: str) -> ConfigError:
    return ConfigError(
        f"{out_dir} does not hold an intact finished run: {what}; it is not read back; fix: restore the folder "
        "from a copy, or remove it so that the run is made again"
    )


def read_json(path: Path, out_dir: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise damaged(out_dir, f"{path.name} cannot be read ({type(error).__name__})") from None


PLOT_FILES = (PLOT_FILE, ATTACK_EFFECT_PLOT_FILE)


def check_sealed(out_dir: Path, plots: bool = True) -> dict[str, Any]:
    """The summary of the finished run sealed in `out_dir`, after checking every file against the
    manifest (the plots too, unless `plots` is False: they are drawn from the others);
    ConfigError naming the first disagreement."""
    manifest = read_json(out_dir / MANIFEST_FILE, out_dir)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(
            manifest.get("files"), dict):
        raise damaged(out_dir, f"{MANIFEST_FILE} is not a format-{MANIFEST_FORMAT} manifest")
    for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE):
        if name not in manifest["files"]:
            raise damaged(out_dir, f"{MANIFEST_FILE} lists no {name}")
    for name, digest in manifest["files"].items():
        if name not in SEALED_FILES:
            raise damaged(out_dir, f"{MANIFEST_FILE} lists {name!r}, which is not a run file")
        path = out_dir / name
        if not plots and name in PLOT_FILES:
            continue
        if not path.is_file():
            raise damaged(out_dir, f"{name} is missing")
        if _digest(path) != digest:
            raise damaged(out_dir, f"{name} changed since the run finished (its sha256 differs from {MANIFEST_FILE})")
    summary = read_json(out_dir / SUMMARY_FILE, out_dir)
    if not isinstance(summary, dict) or summary.get("rounds") != manifest.get("rounds") or manifest.get(
            "metrics_rows") != manifest.get("rounds"):
        raise damaged(out_dir, f"{SUMMARY_FILE}, {METRICS_FILE} and {MANIFEST_FILE} disagree on the rounds")
    return summary
