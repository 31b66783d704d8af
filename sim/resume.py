"""The resume policy: when a run folder may be continued, refused, or read back as finished."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from sim.config import Config, config_from_dict, to_dict
from sim.errors import ConfigError
from sim.io import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE
from sim.state import CHECKPOINT_FORMAT

# Settings a resumed run may change: more rounds extend a run without changing its past.
RESUMABLE_CHANGES = ("rounds",)


def config_differences(saved: dict, requested: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Settings that differ between a saved and a requested config. A setting the saved config
    lacks (added to the simulator after that run started) counts only if the request moves it
    off its default, since at the default it changes nothing."""
    differences = []
    for key in sorted(set(saved) | set(requested)):
        path = prefix + key
        if path in RESUMABLE_CHANGES:
            continue
        old, new = saved.get(key), requested.get(key)
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if key not in saved and new == default:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            differences.extend(config_differences(old, new, default if isinstance(default, dict) else {}, path + "."))
        elif old != new:
            differences.append(f"{path} (saved {old!r}, requested {new!r})")
    return differences


def load_checkpoint(out_dir: Path, cfg: Config) -> dict:
    path = out_dir / CHECKPOINT_FILE
    if not path.is_file():
        finished = " (it holds a finished run: see its summary.json)" if (out_dir / SUMMARY_FILE).is_file() else ""
        raise ConfigError(
            f"nothing to resume in {out_dir}: it has no {CHECKPOINT_FILE}{finished}; "
            "fix: drop --resume to start a new run, or point --out at a stopped run's folder"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"{path} was written in checkpoint format {checkpoint.get('format')!r}, this version reads "
            f"{CHECKPOINT_FORMAT}; fix: start a new run in another folder"
        )
    differences = config_differences(checkpoint["config"], to_dict(cfg), to_dict(Config()))
    if differences:
        raise ConfigError(
            f"cannot resume {out_dir}: the requested config differs from the saved one in "
            + "; ".join(differences)
            + f"; fix: resume with the settings in {out_dir / CONFIG_FILE}, or start a new run in another --out"
        )
    done = checkpoint["next_round"]
    if cfg.rounds < done:
        raise ConfigError(
            f"cannot resume {out_dir} with rounds={cfg.rounds}: {done} rounds are already done; "
            f"fix: --set rounds={done} or more"
        )
    return checkpoint


def finished_summary(out_dir: str | Path, cfg: Config) -> dict | None:
    """The summary of the run of `cfg` finished in `out_dir` (it may have no checkpoint left), or
    None when `out_dir` holds no finished run. A finished run of other settings is refused."""
    out_dir = Path(out_dir)
    summary_path, config_path = out_dir / SUMMARY_FILE, out_dir / CONFIG_FILE
    if not (summary_path.is_file() and config_path.is_file()):
        return None
    saved = yaml.safe_load(config_path.read_text()) or {}
    differences = config_differences(saved, to_dict(cfg), to_dict(Config()))
    if differences:
        raise ConfigError(
            f"cannot read back {out_dir}: its finished run used other settings: "
            + "; ".join(differences)
            + "; fix: choose another --out, or request the settings in "
            + str(config_path)
        )
    summary = json.loads(summary_path.read_text())
    return summary if summary.get("rounds") == cfg.rounds else None


def refuse_overwrite(out_dir: Path) -> None:
    for name in (CHECKPOINT_FILE, METRICS_FILE):
        if (out_dir / name).exists():
            raise ConfigError(
                f"{out_dir} already holds a run ({name} exists); "
                "fix: pass --resume to continue it, or choose another --out"
            )


def load_run_config(out_dir: str | Path) -> Config:
    """The validated Config saved in a run folder's `config.yaml`."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"no {CONFIG_FILE} in {out_dir}; fix: point at the folder of a run")
    return config_from_dict(yaml.safe_load(path.read_text()) or {}, f"'{path}'")
