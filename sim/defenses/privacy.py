"""Client-level local differential privacy: each protocol-following client clips its update to
L2 norm `clip` and adds Gaussian noise before uploading it (DP-FL as in Qi, Wang, Huang,
"Towards the Robustness of Differentially Private Federated Learning", AAAI 2024).

Noise scale. The Gaussian mechanism with L2 sensitivity `C` (the clip: adding or removing one
client's clipped update moves the upload by at most `C`) gives (eps, delta)-DP per upload with

    sigma = sqrt(2 * ln(1.25 / delta)) * C / eps                                   (1)

(Dwork and Roth, Theorem A.1; the proof covers eps < 1, larger eps is the usual extrapolation).
The Robust-DPFL code computes sigma with (1) after replacing eps by

    eps_effective = eps + ln(1 / delta) / (rdp_order - 1)                            (2)

(its `computing_sigma(alpha, gamma, norm)`, with alpha = 1.2 and delta = 1e-8). That term is the
Renyi-DP-to-(eps, delta) conversion term, added rather than subtracted, so (1) then guarantees
eps_effective, not eps. `privacy.rdp_order = null` uses (1) as it stands; setting it (1.2 in that
code) reproduces (2), so budgets can be compared with that code's. Both values are reported.

Budget. One upload is (eps, delta)-DP (or (eps_effective, delta) under (2)). A client that
uploads in k rounds is, by basic composition, (k * eps, k * delta)-DP over the run; the run's
`summary.json` reports the per-upload values, sigma and k for the most-selected client.

Noise for client c in round r comes from its own generator seeded by (seed, c, r), drawn on the
CPU in float32, so the noise does not depend on which other clients were selected, on the
device, or on the order the rows are processed in.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from sim import rng
from sim.errors import ConfigError
from sim.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "PRIVACY_TYPES",
    "GaussianPrivacy",
    "build_privacy",
    "clip_rows",
    "effective_epsilon",
    "gaussian_sigma",
    "noise_generator",
    "privacy_budget",
]

PRIVACY_TYPES = ("none", "gaussian")

# Stream tag of the DP noise, apart from the training streams of sim.engines.schedules.


def effective_epsilon(epsilon: float, delta: float, rdp_order: float | None = None) -> float:
    """The epsilon that goes into (1): `epsilon` itself, or (2) when `rdp_order` is given."""
    _check_budget(epsilon, delta)
    if rdp_order is None:
        return float(epsilon)
    if not rdp_order > 1:
        raise ConfigError(f"privacy.rdp_order={rdp_order!r} must be > 1 or null; fix: --set privacy.rdp_order=null")
    return float(epsilon) + math.log(1.0 / delta) / (float(rdp_order) - 1.0)


def gaussian_sigma(epsilon: float, delta: float, clip: float, rdp_order: float | None = None) -> float:
    """Per-coordinate noise standard deviation for an L2 sensitivity of `clip`: (1), with (2)
    when `rdp_order` is given."""
    if not clip > 0:
        raise ConfigError(f"privacy.clip={clip!r} must be > 0 (the L2 bound of an update); fix: --set privacy.clip=1.0")
    return math.sqrt(2.0 * math.log(1.25 / delta)) * float(clip) / effective_epsilon(epsilon, delta, rdp_order)


def _check_budget(epsilon: float, delta: float) -> None:
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"privacy.epsilon={epsilon!r} must be a number > 0; fix: --set privacy.epsilon=5.0")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ConfigError(f"privacy.delta={delta!r} must be in (0, 1); fix: --set privacy.delta=1e-8")


def clip_rows(rows: Tensor, clip: float) -> Tensor:
    """Rows scaled down to L2 norm `clip` where longer; shorter rows (and zero rows) unchanged."""
    norms = rows.norm(dim=1, keepdim=True)
    return rows * (clip / norms).clamp(max=1.0)


def noise_generator(seed: int, client: int, round: int) -> torch.Generator:
    """Client `client`'s DP-noise stream in round `round` (CPU)."""
    return rng.torch_stream(seed, client, round, rng.PRIVACY_NOISE)


class GaussianPrivacy:
    """Clip each row to L2 norm `clip`, then add N(0, sigma^2) to every coordinate."""

    def __init__(self, clip: float, epsilon: float, delta: float, rdp_order: float | None = None):
        self.clip = float(clip)
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self.rdp_order = None if rdp_order is None else float(rdp_order)
        self.sigma = gaussian_sigma(self.epsilon, self.delta, self.clip, self.rdp_order)

    def noise(self, num_parameters: int, generator: torch.Generator, like: Tensor) -> Tensor:
        draw = torch.randn(num_parameters, generator=generator, dtype=torch.float32)
        return (draw * self.sigma).to(device=like.device, dtype=like.dtype)

    def privatize(self, rows: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        """Clipped and noised copies of `rows` [k, d]; `generators[i]` draws row i's noise."""
        if rows.shape[0] != len(generators):
            raise ValueError(f"{rows.shape[0]} rows but {len(generators)} noise generators")
        clipped = clip_rows(rows, self.clip)
        if rows.shape[0] == 0:
            return clipped
        noise = torch.stack([self.noise(rows.shape[1], generator, rows) for generator in generators])
        return clipped + noise

    def budget(self) -> dict[str, Any]:
        return {
            "mechanism": "gaussian",
            "clip": self.clip,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rdp_order": self.rdp_order,
            "epsilon_effective": effective_epsilon(self.epsilon, self.delta, self.rdp_order),
            "sigma": self.sigma,
        }

    def __repr__(self) -> str:
        return (
            f"GaussianPrivacy(clip={self.clip!r}, epsilon={self.epsilon!r}, delta={self.delta!r}, "
            f"rdp_order={self.rdp_order!r}, sigma={self.sigma:.6g})"
        )


def check_privacy(privacy) -> None:
    """The checks of the `privacy` config section (its type, and the settings the noise's sigma is
    computed from), without building the mechanism."""
    kind = privacy.type
    if kind == "none":
        return
    if kind != "gaussian":
        raise ConfigError(
            f"privacy.type={kind!r} is not one of {', '.join(PRIVACY_TYPES)}; fix: --set privacy.type=gaussian"
        )
    rdp_order = None if privacy.rdp_order is None else float(privacy.rdp_order)
    gaussian_sigma(float(privacy.epsilon), float(privacy.delta), float(privacy.clip), rdp_order)


def build_privacy(privacy) -> GaussianPrivacy | None:
    """The mechanism for the `privacy` config section, or None for `type: none`."""
    check_privacy(privacy)
    if privacy.type == "none":
        return None
    return GaussianPrivacy(privacy.clip, privacy.epsilon, privacy.delta, privacy.rdp_order)


def privacy_budget(privacy, selected_per_round: Iterable[Iterable[int]]) -> dict[str, Any] | None:
    """The run's privacy figures for `summary.json`: the per-upload (epsilon, delta) and sigma,
    and the basic-composition total for the client that uploaded most often. None when off."""
    mechanism = build_privacy(privacy)
    if mechanism is None:
        return None
    uploads = Counter(client for selected in selected_per_round for client in selected)
    most = max(uploads.values(), default=0)
    budget = mechanism.budget()
    budget.update(
        {
            "guarantee": "per upload of one client's update (add/remove one client's clipped update)",
            "max_uploads_per_client": most,
            "epsilon_total_basic_composition": most * budget["epsilon_effective"],
            "delta_total_basic_composition": most * budget["delta"],
        }
    )
    return budget
