"""Checkpointable state: what a run saves after every round so that a resumed run continues
exactly where the uninterrupted one would be.

A part with state (an aggregator such as SparseFed, PoisonedFL, the upload pipeline) has
`state_dict()` / `load_state_dict(state)`; stateless parts have neither and checkpoint as None.

The file is one header line, `leadfl-sim checkpoint <format> sha256=<hex>`, followed by a
`torch.save` payload holding tensors and plain data only. Reading it checks the digest of the
payload (a truncated or changed file is refused) and unpickles it with `weights_only=True`, so a
checkpoint can never run code: anything but tensors, numbers, text, lists and dicts is refused.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sim.errors import ConfigError
from sim.io import CHECKPOINT_FILE, write_atomic
from sim.lazy import torch

CHECKPOINT_FORMAT = 2
_MAGIC = b"leadfl-sim checkpoint "
# Keys every checkpoint holds, with their types (`global_params` and the part states are checked
# against the run's parts when they are restored); "Tensor" is torch.Tensor, named so that importing
# this module does not import torch.
CHECKPOINT_KEYS = {"format": int, "config": dict, "next_round": int, "global_params": "Tensor", "rows": list}


class Component:
    """Checkpointing and repr shared by the run's configured parts (aggregation rules,
    model-poisoning attacks): stateless ones checkpoint as nothing, stateful ones (SparseFed,
    PoisonedFL) override the two methods."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({params})"


def state_of(part: Any) -> Any:
    return part.state_dict() if hasattr(part, "state_dict") else None


def restore(part: Any, state: Any) -> None:
    if state is not None and hasattr(part, "load_state_dict"):
        part.load_state_dict(state)


def encode_checkpoint(payload: dict) -> bytes:
    """The bytes of a checkpoint file: the header line with the payload's digest, then the payload."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = _MAGIC + f"{CHECKPOINT_FORMAT} sha256={hashlib.sha256(body).hexdigest()}\n".encode()
    return header + body


def save_checkpoint(out_dir: Path, *, config: dict, next_round: int, global_params: torch.Tensor, parts: dict[str, Any],
                    rows: list[dict[str, Any]], machine: dict[str, Any] | None = None,
                    segments: list[dict[str, Any]] | None = None) -> None:
    """`parts` maps checkpoint keys (`aggregator_state`, `engine_state`, `upload_state`) to parts;
    `machine` holds the facts a resume checks (`sim.provenance.checked`), `segments` the facts of
    every process that ran rounds so far (`sim.provenance`)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "next_round": next_round,
        "global_params": global_params.detach().cpu(),
        **{key: state_of(part) for key, part in parts.items()},
        "rows": rows,
        "machine": machine,
        "segments": segments,
    }
    write_atomic(Path(out_dir) / CHECKPOINT_FILE, encode_checkpoint(payload))


def _damaged(path: Path, what: str) -> ConfigError:
    return ConfigError(
        f"{path} is not a usable checkpoint: {what}; nothing was changed; fix: restore that file from a copy, "
        f"or start the run again in another --out (its metrics.csv keeps the finished rounds)"
    )


def read_checkpoint(path: str | Path) -> dict:
    """The verified payload of a checkpoint file; a damaged or unsafe file raises ConfigError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _damaged(path, f"cannot read it ({error.strerror})") from None
    if not data:
        raise _damaged(path, "the file is empty")
    header, newline, body = data.partition(b"\n")
    if not header.startswith(_MAGIC) or not newline:
        if data[:2] == b"PK":
            raise ConfigError(
                f"{path} was written by an older version of the simulator (no checksum); it cannot be verified "
                "and is not read; fix: start the run again in another --out"
            )
        raise _damaged(path, "it does not start with the checkpoint header")
    fields = header[len(_MAGIC):].decode("ascii", "replace").split()
    if len(fields) != 2 or not fields[1].startswith("sha256="):
        raise _damaged(path, "its header is malformed")
    if fields[0] != str(CHECKPOINT_FORMAT):
        raise ConfigError(
            f"{path} was written in checkpoint format {fields[0]!r}, this version reads {CHECKPOINT_FORMAT}; "
            "fix: start a new run in another --out"
        )
    if hashlib.sha256(body).hexdigest() != fields[1][len("sha256="):]:
        raise _damaged(path, "its checksum does not match (the file was truncated or changed)")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f"the global {found.group(1)}" if found else "an object"
        raise _damaged(path, f"it holds {what}, not only tensors and plain data, and is not loaded") from None
    except Exception as error:  # noqa: BLE001 - any decoding failure is a damaged file
        raise _damaged(path, f"its payload cannot be read ({type(error).__name__})") from None
    if not isinstance(payload, dict):
        raise _damaged(path, f"it holds a {type(payload).__name__}, not a checkpoint")
    for key, kind in CHECKPOINT_KEYS.items():
        kind = torch.Tensor if kind == "Tensor" else kind
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise _damaged(path, f"its '{key}' is missing or not a {kind.__name__}")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise _damaged(path, f"its format {payload['format']!r} disagrees with its header")
    rows = payload["rows"]
    if payload["next_round"] != len(rows) or not all(isinstance(row, dict) for row in rows):
        raise _damaged(path, f"it holds {len(rows)} rounds of metrics but says {payload['next_round']} are done")
    return payload


def restore_parts(checkpoint: dict, parts: dict[str, Any]) -> None:
    for key, part in parts.items():
        try:
            restore(part, checkpoint.get(key))
        except (KeyError, AttributeError, TypeError, ValueError, RuntimeError) as error:
            raise ConfigError(
                f"the checkpoint's {key} does not fit this run's {type(part).__name__} ({type(error).__name__}); "
                "nothing was changed; fix: start the run again in another --out"
            ) from None
