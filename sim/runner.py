"""One simulated federated run: the round loop, its checkpoint, and the files it leaves behind.

Each round is select -> train the selected clients -> aggregate -> update the global model ->
evaluate -> record. After every round the run folder is brought up to date:

* `config.yaml`   the resolved configuration (written once at the start)
* `metrics.csv`   one row per finished round (see `METRIC_COLUMNS`)
* `checkpoint.pt` global parameters, aggregator and engine state, the rows so far, next round
* `summary.json`  and `accuracy.png` once the last round is done

Every file is written to a temporary name and moved into place, so a run stopped at any moment
(Ctrl-C, a killed job) leaves either the previous or the new version, never half a file, and
`run(..., resume=True)` continues after the last finished round.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from sim.config import Config, config_from_dict, to_dict, validate
from sim.engines.registry import build_engine, describe_engine, resolve_engine
from sim.errors import ConfigError
from sim.server.aggregators import byzantine_f

METRIC_COLUMNS = (
    "round",
    "main_accuracy",
    "backdoor_accuracy",
    "test_loss",
    "malicious_selected",
    "selected",
    "malicious_ids",
    "kept",
    "rejected_nonfinite",
    "wall_time_s",
)
# Columns whose values depend on the machine's speed, not on the run's maths.
TIMING_COLUMNS = ("wall_time_s",)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "accuracy.png"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1

# Settings a resumed run may change: more rounds extend a run without changing its past.
RESUMABLE_CHANGES = ("rounds",)


# ----------------------------------------------------------------------------------------------
# atomic files


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


def save_torch_atomic(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# metrics.csv and summary.json


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly, so equal runs give byte-equal files
    return str(value)


def metrics_csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in rows:
        writer.writerow([_format_cell(row[column]) for column in METRIC_COLUMNS])
    return out.getvalue()


def _parse_float(text: str) -> float | None:
    return float(text) if text != "" else None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a `metrics.csv`, with numbers as numbers and id lists as text."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"no {METRICS_FILE} at {path}; fix: point at the folder of a run")
    rows = []
    with open(path, newline="") as stream:
        for record in csv.DictReader(stream):
            rows.append(
                {
                    "round": int(record["round"]),
                    "main_accuracy": _parse_float(record["main_accuracy"]),
                    "backdoor_accuracy": _parse_float(record["backdoor_accuracy"]),
                    "test_loss": _parse_float(record["test_loss"]),
                    "malicious_selected": int(record["malicious_selected"]),
                    "selected": record["selected"],
                    "malicious_ids": record["malicious_ids"],
                    "kept": record["kept"],
                    "rejected_nonfinite": record["rejected_nonfinite"],
                    "wall_time_s": _parse_float(record["wall_time_s"]),
                }
            )
    return rows


def _ids(ids: list[int]) -> str:
    return " ".join(str(i) for i in ids)


def key_settings(cfg: Config) -> dict[str, Any]:
    """The settings a reader needs to tell runs apart, by their `--set` paths."""
    settings = {
        "seed": cfg.seed,
        "device": cfg.device,
        "engine": cfg.engine,
        "data.dataset": cfg.data.dataset,
        "data.partition": cfg.data.partition,
        "model": cfg.model,
        "clients.num_clients": cfg.clients.num_clients,
        "clients.num_malicious": cfg.clients.num_malicious,
        "clients.clients_per_round": cfg.clients.clients_per_round,
        "selection.schedule": cfg.selection.schedule,
        "training.local_epochs": cfg.training.local_epochs,
        "training.local_steps": cfg.training.local_steps,
        "training.batch_size": cfg.training.batch_size,
        "training.lr": cfg.training.lr,
        "attack.type": cfg.attack.type,
        "client_defense.type": cfg.client_defense.type,
        "server.aggregator": cfg.server.aggregator,
        "eval.test_size": cfg.eval.test_size,
    }
    if cfg.client_defense.type == "leadfl":
        settings["client_defense.variant"] = cfg.client_defense.variant
        settings["client_defense.alpha"] = cfg.client_defense.alpha
        settings["client_defense.q"] = cfg.client_defense.q
    elif cfg.client_defense.type in ("ldp", "flwbc"):
        settings["client_defense.noise_scale"] = cfg.client_defense.noise_scale
    if cfg.server.aggregator in ("krum", "multikrum", "bulyan"):
        settings["server.f (resolved)"] = byzantine_f(
            cfg.server, cfg.clients.clients_per_round, cfg.clients.num_clients, cfg.clients.num_malicious
        )
    if cfg.training.lr_schedule != "constant":
        settings["training.lr_schedule"] = cfg.training.lr_schedule
    if cfg.model_poisoning.type != "none":
        settings["model_poisoning.type"] = cfg.model_poisoning.type
    if cfg.privacy.type != "none":
        settings["privacy.type"] = cfg.privacy.type
        settings["privacy.epsilon"] = cfg.privacy.epsilon
    return settings


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(rows: list[dict[str, Any]], cfg: Config, engine: str | None = None) -> dict[str, Any]:
    """Headline numbers of a run (accuracies in percent) and its key settings; `engine` is
    what trained the clients (`engine: auto` resolved, distributed or not)."""
    main = [row["main_accuracy"] for row in rows]
    backdoor = [row["backdoor_accuracy"] for row in rows if row["backdoor_accuracy"] is not None]
    malicious = [row["malicious_selected"] for row in rows]
    return {
        "rounds": len(rows),
        "final_main_accuracy": main[-1] if main else None,
        "best_main_accuracy": max(main) if main else None,
        "final_backdoor_accuracy": rows[-1]["backdoor_accuracy"] if rows else None,
        "mean_backdoor_accuracy": _mean(backdoor),
        "final_test_loss": rows[-1]["test_loss"] if rows else None,
        "mean_malicious_per_round": _mean(malicious),
        "rounds_with_malicious": sum(1 for count in malicious if count > 0),
        "wall_time_s": sum(row["wall_time_s"] for row in rows),
        "settings": {**key_settings(cfg), **({"engine (resolved)": engine} if engine else {})},
        **_privacy_summary(rows, cfg),
    }


def _privacy_summary(rows: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """{"privacy": the DP budget (see sim.defenses.privacy.privacy_budget)} when DP is on, else {}."""
    if cfg.privacy.type == "none":
        return {}
    from sim.defenses.privacy import privacy_budget

    return {"privacy": privacy_budget(cfg.privacy, [row["selected"].split() for row in rows])}


# ----------------------------------------------------------------------------------------------
# the parts of a run


def _check_device(device: str) -> torch.device:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but this machine has no usable CUDA GPU; fix: --set device=cpu")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r} but only {torch.cuda.device_count()} GPU(s) are visible; fix: --set device=cuda:0"
            )
    return torch.device(device)


def _seed_everything(seed: int, round_index: int) -> None:
    # Every round starts from RNG states that depend only on (seed, round), so a resumed run draws
    # what the uninterrupted run drew, whatever a part did with the global generators before.
    round_seed = (seed * 1_000_003 + round_index) % (2**63)
    torch.manual_seed(round_seed)
    np.random.seed(round_seed % (2**32))
    random.seed(round_seed)


def _state_of(part: Any) -> Any:
    return part.state_dict() if hasattr(part, "state_dict") else None


def _restore(part: Any, state: Any) -> None:
    if state is not None and hasattr(part, "load_state_dict"):
        part.load_state_dict(state)


class _Parts:
    """Dataset, selector, engine, aggregator and evaluation model of one run."""

    def __init__(self, cfg: Config, device: torch.device):
        from sim.server.aggregators import build_aggregator
        from sim.attacks.data_poisoning import stamp_trigger
        from sim.data import load_dataset, partition
        from sim.models import build_model, flatten_parameters
        from sim.selection import Selector
        from sim.uploads import UploadPipeline

        self.dataset = load_dataset(
            cfg.data.dataset,
            cfg.data.data_dir,
            device,
            seed=cfg.seed,
            synthetic_train_size=cfg.data.synthetic_train_size,
            synthetic_test_size=cfg.data.synthetic_test_size,
        )
        self.partitions = partition(
            self.dataset.train_y,
            cfg.clients.num_clients,
            cfg.data.partition,
            cfg.seed,
            dirichlet_beta=cfg.data.dirichlet_beta,
            shards_per_client=cfg.data.shards_per_client,
        )
        self.selector = Selector.from_config(cfg)
        self.malicious = list(self.selector.malicious)
        self.aggregator = build_aggregator(
            cfg.server, cfg.clients.clients_per_round, cfg.clients.num_clients, cfg.clients.num_malicious
        )
        self.model = build_model(
            cfg.model, self.dataset.image_shape, self.dataset.num_classes, seed=cfg.seed
        ).to(device)
        self.initial_params = flatten_parameters(self.model)
        self.engine = build_engine(cfg, self.dataset, self.partitions, self.malicious)
        self.uploads = UploadPipeline(cfg, self.malicious, self.initial_params.numel())
        test_size = cfg.eval.test_size
        self.test_x = self.dataset.test_x[:test_size] if test_size else self.dataset.test_x
        self.test_y = self.dataset.test_y[:test_size] if test_size else self.dataset.test_y
        hi, lo = self.dataset.trigger_hi, self.dataset.trigger_lo
        self.stamp = lambda images: stamp_trigger(images, hi, lo)


# ----------------------------------------------------------------------------------------------
# run folder


def _config_differences(saved: dict, requested: dict, defaults: dict, prefix: str = "") -> list[str]:
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
            differences.extend(_config_differences(old, new, default if isinstance(default, dict) else {}, path + "."))
        elif old != new:
            differences.append(f"{path} (saved {old!r}, requested {new!r})")
    return differences


def _load_checkpoint(out_dir: Path, cfg: Config) -> dict:
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
    differences = _config_differences(checkpoint["config"], to_dict(cfg), to_dict(Config()))
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
    differences = _config_differences(saved, to_dict(cfg), to_dict(Config()))
    if differences:
        raise ConfigError(
            f"cannot read back {out_dir}: its finished run used other settings: "
            + "; ".join(differences)
            + "; fix: choose another --out, or request the settings in "
            + str(config_path)
        )
    summary = json.loads(summary_path.read_text())
    return summary if summary.get("rounds") == cfg.rounds else None


def _refuse_overwrite(out_dir: Path) -> None:
    for name in (CHECKPOINT_FILE, METRICS_FILE):
        if (out_dir / name).exists():
            raise ConfigError(
                f"{out_dir} already holds a run ({name} exists); "
                "fix: pass --resume to continue it, or choose another --out"
            )


def write_outputs(
    out_dir: Path, rows: list[dict[str, Any]], cfg: Config, label: str | None = None, engine: str | None = None
) -> dict:
    """summary.json and accuracy.png from the rows; returns the summary."""
    from sim.plots import plot_run

    summary = summarize(rows, cfg, engine)
    if label is not None:
        summary = {"label": label, **summary}
    write_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    plot_run(rows, out_dir / PLOT_FILE, title=_plot_title(cfg, label))
    return summary


def _plot_title(cfg: Config, label: str | None) -> str:
    defense = cfg.client_defense.type
    if defense == "leadfl":
        defense = f"leadfl ({cfg.client_defense.variant}, alpha {cfg.client_defense.alpha:g})"
    title = f"{cfg.data.dataset}, {cfg.server.aggregator}, client defense {defense}, {cfg.selection.schedule} selection"
    if cfg.model_poisoning.type != "none":
        title += f", model poisoning {cfg.model_poisoning.type}"
    if cfg.privacy.type != "none":
        title += f", DP epsilon {cfg.privacy.epsilon:g}"
    return f"{label}: {title}" if label else title


# ----------------------------------------------------------------------------------------------
# the round loop


def run(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    *,
    label: str | None = None,
) -> dict[str, Any]:
    """Run (or, with `resume`, continue) the experiment `cfg` in `out_dir`; returns the summary.

    Same config and seed give the same `metrics.csv` on CPU, apart from the wall-time column.
    """
    from tqdm.auto import tqdm

    from sim.metrics import evaluate
    from sim.models import load_flat_parameters_

    from sim.engines import distributed

    validate(cfg)
    # Under torchrun: join the process group; this rank's device (cuda -> its LOCAL_RANK's GPU).
    device = distributed.init_from_env(_check_device(cfg.device))
    writer = distributed.is_main_process()  # only rank 0 writes files and prints
    out_dir = Path(out_dir)

    checkpoint = None
    if resume:
        checkpoint = distributed.broadcast_object(_load_checkpoint(out_dir, cfg) if writer else None)
    elif writer and out_dir.exists():
        _refuse_overwrite(out_dir)
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)

    _seed_everything(cfg.seed, 0)
    parts = _Parts(cfg if str(device) == cfg.device else dataclasses.replace(cfg, device=str(device)), device)
    _, engine_reason = resolve_engine(cfg)
    engine_description = describe_engine(cfg)
    if writer and (cfg.engine == "auto" or distributed.is_active()):
        choice = f"auto -> {engine_description} ({engine_reason})" if cfg.engine == "auto" else engine_description
        print(f"engine: {choice}", file=sys.stderr, flush=True)

    if checkpoint is None:
        start_round = 0
        rows: list[dict[str, Any]] = []
        global_params = parts.initial_params.clone()
    else:
        start_round = checkpoint["next_round"]
        rows = list(checkpoint["rows"])
        global_params = checkpoint["global_params"].to(device)
        _restore(parts.aggregator, checkpoint["aggregator_state"])
        _restore(parts.engine, checkpoint["engine_state"])
        _restore(parts.uploads, checkpoint.get("upload_state"))

    if writer:
        write_atomic(out_dir / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if writer and start_round < cfg.rounds:
        # A run extended past its old end has no final results until it reaches the new one.
        for name in (SUMMARY_FILE, PLOT_FILE):
            (out_dir / name).unlink(missing_ok=True)
    malicious_ids = set(parts.malicious)
    target_label = cfg.attack.target_label

    bar = tqdm(
        total=cfg.rounds,
        initial=start_round,
        desc=label or "rounds",
        unit="round",
        disable=not progress or not writer,
        dynamic_ncols=True,
    )
    try:
        for round_index in range(start_round, cfg.rounds):
            started = time.perf_counter()
            _seed_everything(cfg.seed, round_index)

            selected = parts.selector.select(round_index)
            updates = parts.engine.train_clients(global_params, selected, round_index)
            updates = parts.uploads(updates, selected, round_index, global_params)  # DP, model poisoning
            aggregation = parts.aggregator(updates)
            parts.uploads.observe(aggregation.update)
            global_params = global_params + aggregation.update.to(device=global_params.device, dtype=global_params.dtype)

            load_flat_parameters_(parts.model, global_params)
            scores = evaluate(
                parts.model,
                parts.test_x,
                parts.test_y,
                target_label=target_label,
                stamp=parts.stamp,
                batch_size=cfg.eval.batch_size,
            )
            malicious_in_round = [c for c in selected if c in malicious_ids]
            rows.append(
                {
                    "round": round_index,
                    "main_accuracy": float(scores["main_accuracy"]),
                    "backdoor_accuracy": None
                    if scores["backdoor_accuracy"] is None
                    else float(scores["backdoor_accuracy"]),
                    "test_loss": float(scores["test_loss"]),
                    "malicious_selected": len(malicious_in_round),
                    "selected": _ids(selected),
                    "malicious_ids": _ids(malicious_in_round),
                    "kept": _ids([selected[i] for i in aggregation.kept]),
                    "rejected_nonfinite": _ids([selected[i] for i in aggregation.rejected_nonfinite]),
                    "wall_time_s": round(time.perf_counter() - started, 4),
                }
            )

            if writer:
                write_atomic(out_dir / METRICS_FILE, metrics_csv_text(rows))
                save_torch_atomic(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "config": to_dict(cfg),
                        "next_round": round_index + 1,
                        "global_params": global_params.detach().cpu(),
                        "aggregator_state": _state_of(parts.aggregator),
                        "engine_state": _state_of(parts.engine),
                        "upload_state": _state_of(parts.uploads),
                        "rows": rows,
                    },
                    out_dir / CHECKPOINT_FILE,
                )
            bar.set_postfix(_postfix(rows[-1]), refresh=False)
            bar.update(1)
    finally:
        bar.close()

    if not writer:
        return summarize(rows, cfg, engine_description)
    write_atomic(out_dir / METRICS_FILE, metrics_csv_text(rows))
    return write_outputs(out_dir, rows, cfg, label, engine=engine_description)


def _postfix(row: dict[str, Any]) -> dict[str, str]:
    postfix = {"main": f"{row['main_accuracy']:.1f}%"}
    if row["backdoor_accuracy"] is not None:
        postfix["backdoor"] = f"{row['backdoor_accuracy']:.1f}%"
    postfix["malicious"] = str(row["malicious_selected"])
    return postfix


def load_run_config(out_dir: str | Path) -> Config:
    """The validated Config saved in a run folder's `config.yaml`."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"no {CONFIG_FILE} in {out_dir}; fix: point at the folder of a run")
    return config_from_dict(yaml.safe_load(path.read_text()) or {}, f"'{path}'")


def format_summary(summary: dict[str, Any]) -> str:
    """A few aligned lines for the terminal."""

    def percent(value: float | None) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}%"

    pairs = [
        ("rounds", str(summary["rounds"])),
        ("main accuracy (final)", percent(summary["final_main_accuracy"])),
        ("main accuracy (best)", percent(summary["best_main_accuracy"])),
        ("backdoor accuracy (avg)", percent(summary["mean_backdoor_accuracy"])),
        ("backdoor accuracy (final)", percent(summary["final_backdoor_accuracy"])),
        ("wall time", f"{summary['wall_time_s']:.1f} s"),
    ]
    width = max(len(name) for name, _ in pairs)
    lines = [f"{name.ljust(width)}  {value}" for name, value in pairs]
    return "\n".join(lines)
