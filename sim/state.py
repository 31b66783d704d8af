"""Checkpointable state: what a run saves after every round so that a resumed run continues
exactly where the uninterrupted one would be.

A part with state (an aggregator such as SparseFed, PoisonedFL, the upload pipeline) has
`state_dict()` / `load_state_dict(state)`; stateless parts have neither and checkpoint as None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sim.io import CHECKPOINT_FILE, save_torch_atomic

CHECKPOINT_FORMAT = 1


def state_of(part: Any) -> Any:
    return part.state_dict() if hasattr(part, "state_dict") else None


def restore(part: Any, state: Any) -> None:
    if state is not None and hasattr(part, "load_state_dict"):
        part.load_state_dict(state)


def save_checkpoint(out_dir: Path, *, config: dict, next_round: int, global_params: torch.Tensor, parts: dict[str, Any],
                    rows: list[dict[str, Any]]) -> None:
    """`parts` maps checkpoint keys (`aggregator_state`, `engine_state`, `upload_state`) to parts."""
    save_torch_atomic(
        {
            "format": CHECKPOINT_FORMAT,
            "config": config,
            "next_round": next_round,
            "global_params": global_params.detach().cpu(),
            **{key: state_of(part) for key, part in parts.items()},
            "rows": rows,
        },
        Path(out_dir) / CHECKPOINT_FILE,
    )


def restore_parts(checkpoint: dict, parts: dict[str, Any]) -> None:
    for key, part in parts.items():
        restore(part, checkpoint.get(key))
