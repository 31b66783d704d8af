"""How the round's malicious uploads sit among the benign ones, as the server receives them
(`metrics.upload_stats`, docs/algorithms.md §7).

Distance-based rules (Krum, Multi-Krum, Bulyan, FLAME) keep or drop an upload by where it lies
relative to the others; these columns say where that is, per round, so a run can show why its
rule kept or dropped the attackers: each group's mean norm, its mean distance to the benign
centre and its mean cosine to it. A benign upload is measured against the mean of the *other*
benign uploads (leave one out), so its distance is the benign spread the rule sees, not shrunk by
its own weight in the mean; a malicious one against the mean of all benign uploads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sim.lazy import F, inference_mode, torch
from sim.server.aggregate import split_finite

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["UPLOAD_STAT_COLUMNS", "upload_statistics"]

UPLOAD_STAT_COLUMNS = ("upload_norm_benign", "upload_norm_malicious", "upload_distance_benign",
                       "upload_distance_malicious", "upload_cosine_benign", "upload_cosine_malicious")


@inference_mode
def upload_statistics(updates: Tensor, malicious: Sequence[bool]) -> dict[str, float | None]:
    """The `UPLOAD_STAT_COLUMNS` of one round: `updates` [n, d] as the server receives them, row i
    malicious when `malicious[i]`. In float64; a group's column is None when the group is empty,
    and the distances and cosines also when there is no benign centre to measure against (no
    benign upload for the malicious group, fewer than two for the benign one). Non-finite rows
    are left out (the rules drop them before anything else)."""
    if updates.dim() != 2 or updates.shape[0] != len(malicious):
        raise ValueError(f"updates of shape {tuple(updates.shape)} need one row per entry of malicious "
                         f"({len(malicious)})")
    finite_updates, finite_rows, _ = split_finite(updates)  # the rows every rule sees
    rows = finite_updates.to(torch.float64)
    bad = [i for i, row in enumerate(finite_rows) if malicious[row]]
    good = [i for i, row in enumerate(finite_rows) if not malicious[row]]
    benign = rows[good]
    out: dict[str, float | None] = dict.fromkeys(UPLOAD_STAT_COLUMNS)
    if good:
        out["upload_norm_benign"] = float(benign.norm(dim=1).mean())
    if bad:
        out["upload_norm_malicious"] = float(rows[bad].norm(dim=1).mean())
    total = benign.sum(dim=0)
    if len(good) >= 2:
        others = (total.unsqueeze(0) - benign) / (len(good) - 1)  # each benign row's leave-one-out centre
        out["upload_distance_benign"] = float((benign - others).norm(dim=1).mean())
        out["upload_cosine_benign"] = float(F.cosine_similarity(benign, others, dim=1).mean())
    if bad and good:
        centre = (total / len(good)).unsqueeze(0)
        out["upload_distance_malicious"] = float((rows[bad] - centre).norm(dim=1).mean())
        out["upload_cosine_malicious"] = float(F.cosine_similarity(rows[bad], centre, dim=1).mean())
    return out
