"""A run folder's files, and how they are written: every file goes to a temporary name in the
same folder and is moved into place, so a run stopped at any moment (Ctrl-C, a killed job)
leaves either the previous or the new version, never half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CONFIG_FILE = "config.yaml"  # the resolved configuration (written once at the start)
METRICS_FILE = "metrics.csv"  # one row per finished round (sim.reporting.RoundRecord)
SUMMARY_FILE = "summary.json"  # headline numbers, once the last round is done
PLOT_FILE = "accuracy.png"  # accuracies per round, once the last round is done
ATTACK_EFFECT_PLOT_FILE = "attack_effect.png"  # with metrics.attack_effect, once the last round is done
CHECKPOINT_FILE = "checkpoint.pt"  # what a resumed run continues from (sim.state)


def _file_mode() -> int:
    # Temporary files are created owner-only; results get the mode a plain open() would give.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        try:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
            os.chmod(tmp.name, _FILE_MODE)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)

