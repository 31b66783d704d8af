"""The preset files in configs/: finding one by name and listing them with their descriptions.

Imports nothing heavy, so `leadfl-sim list-presets` answers without loading torch.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from sim import yaml_input
from sim.errors import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def list_presets(configs_dir: Path = CONFIGS_DIR) -> list[tuple[str, str]]:
    """(name, one-line description) for every preset YAML, sorted by name."""
    presets = []
    for path in sorted(configs_dir.glob("*.yaml")):
        raw = _read_yaml(path, f"preset '{path.stem}'")
        description = raw.get("description", "") if isinstance(raw, dict) else ""
        presets.append((path.stem, " ".join(str(description).split())))
    return presets


def preset_path(name: str, configs_dir: Path = CONFIGS_DIR) -> Path:
    path = configs_dir / f"{name}.yaml"
    if path.is_file():
        return path
    names = [p.stem for p in sorted(configs_dir.glob("*.yaml"))]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    # The fix names the closest preset, however far (never merely the first in the list).
    closest = difflib.get_close_matches(name, names, n=1, cutoff=0.0) or ["NAME"]
    raise ConfigError(
        f"preset '{name}' not found in {configs_dir}; {hint}available: {', '.join(names) or 'none'}; "
        f"fix: --preset {closest[0]}"
    )


def _read_yaml(path: Path, source: str) -> dict:
    raw = yaml_input.read(path, source)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} at {path} must be a mapping of settings, got a {type(raw).__name__}; "
                          "fix: write it as 'section:' and 'key: value' lines (see configs/demo.yaml)")
    return raw
