"""The resume policy: when a run folder may be continued, refused, or read back as finished."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any


from sim import yaml_input
from sim.config import Config, config_from_dict, migrate_settings, to_dict
from sim.errors import ConfigError
from sim.io import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE
from sim.records import metrics_csv_text
from sim.state import read_checkpoint

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


def check_machine(path: Path, saved: dict | None, current: dict[str, Any]) -> None:
    """Refuse to continue the run saved in `path` on machine facts that would change its numbers."""
    if not saved:
        return
    differences = [f"{key} (saved {saved.get(key)!r}, now {value!r})" for key, value in current.items()
                   if saved.get(key) != value]
    if differences:
        only_threads = [key for key in current if saved.get(key) != current[key]] == ["threads"]
        fix = f"--threads {saved['threads']}" if only_threads else "continue it on the machine that started it"
        raise ConfigError(
            f"cannot resume {path}: it ran with other machine facts, which change the results: "
            + "; ".join(differences)
            + f"; fix: {fix}, or pass --allow-machine-change to continue anyway"
        )


def load_checkpoint(out_dir: Path, cfg: Config, machine: dict[str, Any] | None = None,
                    allow_machine_change: bool = False) -> dict:
    path = out_dir / CHECKPOINT_FILE
    if not path.is_file():
        finished = " (it holds a finished run: see its summary.json)" if (out_dir / SUMMARY_FILE).is_file() else ""
        raise ConfigError(
            f"nothing to resume in {out_dir}: it has no {CHECKPOINT_FILE}{finished}; "
            "fix: drop --resume to start a new run, or point --out at a stopped run's folder"
        )
    checkpoint = read_checkpoint(path)
    differences = config_differences(migrate_settings(checkpoint["config"]), to_dict(cfg), to_dict(Config()))
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
    _check_metrics_agree(out_dir, checkpoint["rows"])
    if machine is not None and not allow_machine_change:
        check_machine(out_dir, checkpoint.get("machine"), machine)
    return checkpoint


def _check_metrics_agree(out_dir: Path, rows: list[dict]) -> None:
    """A resumed run rewrites `metrics.csv` from the checkpoint's rows, so the file must hold no
    round the checkpoint lacks: it may be missing or hold a prefix of those rows (a run stopped
    between writing the checkpoint and the metrics), never other or more rounds."""
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return
    try:
        with open(path, newline="") as stream:
            saved = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error):
        saved = None
    expected = list(csv.DictReader(io.StringIO(metrics_csv_text(rows))))
    # Compared on the file's own columns, so a file from before a column was added still agrees.
    if saved is not None and len(saved) <= len(expected) and all(
        old == {key: new.get(key, "") for key in old}
        for old, new in zip(saved, expected)
    ):
        return
    count = "unreadable" if saved is None else len(saved)
    raise ConfigError(
        f"cannot resume {out_dir}: {path} holds {count} round(s) that disagree with the "
        f"{len(rows)} in {out_dir / CHECKPOINT_FILE}, and resuming would overwrite them; nothing was changed; "
        f"fix: restore the matching {CHECKPOINT_FILE}, or start the run again in another --out"
    )


def check_same_run(out_dir: Path, cfg: Config) -> None:
    """Refuse to read back the run in `out_dir` as one of `cfg` where it used other settings."""
    config_path = out_dir / CONFIG_FILE
    try:
        saved = yaml_input.read(config_path, CONFIG_FILE) or {}
    except ConfigError as error:
        raise ConfigError(f"cannot read back {out_dir}: {error}; fix: restore it from a copy, or remove the folder "
                          "so that the run is made again") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"cannot read back {out_dir}: its {CONFIG_FILE} holds no settings; fix: restore it from a "
                          "copy, or remove the folder so that the run is made again")
    saved = migrate_settings(saved)
    differences = config_differences(saved, to_dict(cfg), to_dict(Config()))
    if differences:
        raise ConfigError(
            f"cannot read back {out_dir}: its finished run used other settings: "
            + "; ".join(differences)
            + "; fix: choose another --out, or request the settings in "
            + str(config_path)
        )


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
    return config_from_dict(yaml_input.read(path, CONFIG_FILE) or {}, f"'{path}'")
