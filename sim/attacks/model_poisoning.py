"""Model-poisoning attacks: the malicious clients' uploads, crafted from update vectors.

Each round, after the engine has trained every selected client (malicious ones included: they
train as the client attack `attack.type` says) and client-level DP has been applied to the
protocol-following rows, an attack replaces the rows of the selected malicious clients:

    attack(updates[n, d], malicious[n] bool, context) -> updates with the malicious rows replaced

`context` (`AttackContext`) holds the round, the global parameters, the last global update
(`None` in round 0), a generator seeded from (seed, round), the selected client ids and the DP
mechanism (or None). "Statistics of the updates" below means over all `n` rows as they stand
before the replacement -- the benign rows as uploaded and the malicious clients' own honestly
trained rows -- which is what the LeadFL authors' server-side attacks read (all selected
clients); unlike that code, every attack here works on updates (local - global), never on
absolute weights, the mean is the plain mean and the standard deviation is the unbiased
per-coordinate one.

Attacks (`MODEL_POISONING` maps the config name `model_poisoning.type` to the class):

* `lie` -- "A little is enough" (Baruch et al. 2019): every malicious row = mean + z * std.
  `z = null` takes their z_max: with n rows and m malicious, s = floor(n/2 + 1) - m and
  z = Phi^-1((n - s) / n) (s held at >= 1, z at >= 0).
* `fang` -- Fang et al. 2020, the attack on Krum (full knowledge): every malicious row =
  -lambda * sign(mean update). lambda starts at their upper bound (below) and halves until the
  server's Krum (with the run's f) picks a malicious row, or lambda falls below 1e-5.
* `min_max` -- Shejwalkar and Houmansadr 2021: every malicious row = mean - lambda * std with the
  largest lambda (binary search from 10, to 1e-5) whose squared distance to every row stays within
  the largest squared distance between two rows.
* `poisonedfl` -- Xie, Fang, Gong 2025, multi-round consistency (see `PoisonedFL`).
* `attack_dpfl` -- Qi et al. 2024: the malicious client's own (poisoned, un-noised) update,
  rescaled to the L2 norm its DP-noised version would have.
* `attack_dpfl_adaptive` -- the same after subtracting the update's own coordinate mean, so the
  Robust-DPFL detection score |mean of coordinates| is zero.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.attacks.model.base import (  # noqa: F401  (the interface, re-exported)
    AttackContext,
    AttackSetup,
    ModelPoisoningAttack,
    _check_mask,
    _mean_and_std,
    attack_generator,
)
from sim.attacks.model.ipm import IPM
from sim.attacks.model.model_replacement import ModelReplacement
from sim.defenses.privacy import noise_generator
from sim.lazy import torch
from sim.server.krum import Krum
from sim import rng
from sim.errors import ConfigError
from sim.settings import check_settings, setting, settings_from

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "MODEL_POISONING",
    "POISONEDFL_COORDINATES",
    "AttackContext",
    "AttackDPFL",
    "AttackDPFLAdaptive",
    "Fang",
    "LittleIsEnough",
    "MinMax",
    "ModelPoisoningAttack",
    "PoisonedFL",
    "alignment_threshold",
    "build_model_poisoning",
    "lie_z_max",
]

POISONEDFL_COORDINATES = ("shared", "partitioned")

# Where searches for a scale factor stop (Fang et al.'s and Shejwalkar et al.'s threshold).
LAMBDA_THRESHOLD = 1e-5
MIN_MAX_START = 10.0


# ----------------------------------------------------------------------------------------------
# classic attacks


def lie_z_max(n: int, m: int) -> float:
    """Baruch et al.'s z_max: s = floor(n/2 + 1) - m benign workers must be out-voted; z is the
    standard-normal quantile of (n - s) / n. s is held at >= 1 (a malicious majority would ask
    for an infinite z) and z at >= 0."""
    if n < 1:
        return 0.0
    s = max(1, math.floor(n / 2 + 1) - m)
    share = (n - s) / n
    if share <= 0.5:
        return 0.0
    return statistics.NormalDist().inv_cdf(share)


@dataclass
class LieSettings:
    z: float | None = setting(None, "float", low=0, nullable=True,
                              help="standard deviations from the mean; null: Baruch et al.'s z_max")


class LittleIsEnough(ModelPoisoningAttack):
    """Every malicious row = mean + z * std of the updates (per coordinate)."""

    name = "lie"
    settings = LieSettings

    def __init__(self, z: float | None = None):
        if z is not None and not (isinstance(z, (int, float)) and math.isfinite(z) and z >= 0):
            raise ValueError(f"z must be a number >= 0 or None, got {z!r}")
        self.z = None if z is None else float(z)

    def z_for(self, n: int, m: int) -> float:
        return lie_z_max(n, m) if self.z is None else self.z

    def craft(self, updates: Tensor, malicious: Tensor, context: AttackContext) -> Tensor:
        m = int(malicious.sum())
        mean, std = _mean_and_std(updates)
        row = mean + self.z_for(updates.shape[0], m) * std
        return row.expand(m, -1).clone()


def fang_lambda_bound(benign: Tensor, n: int, c: int) -> float:
    """Fang et al.'s upper bound on lambda, on updates (w_Re, the global model, is the origin):

        1 / ((n - 2c - 1) sqrt(d)) * min_i sum_{l in the n - c - 2 benign rows nearest to i} ||u_l - u_i||
        + 1 / sqrt(d) * max_i ||u_i||

    over the benign rows i; counts are held at >= 1 so the bound exists for every n and c."""
    k, d = benign.shape
    if k == 0:
        return 0.0
    root_d = math.sqrt(d)
    far = float(benign.norm(dim=1).max()) / root_d
    if k < 2:
        return far
    distances = torch.cdist(benign.double(), benign.double())
    distances.fill_diagonal_(math.inf)
    nearest = min(k - 1, max(1, n - c - 2))
    sums = distances.topk(nearest, dim=1, largest=False).values.sum(dim=1)
    return float(sums.min()) / (max(1, n - 2 * c - 1) * root_d) + far


class Fang(ModelPoisoningAttack):
    """Fang et al.'s full-knowledge attack on Krum, on updates.

    s = sign(mean of the updates) is the direction the model would move without the attack. All
    malicious rows = -lambda * s; lambda starts at `fang_lambda_bound` and halves until Krum(f)
    over the rows the server will see (benign rows + the crafted ones) picks a crafted row, or
    until lambda < 1e-5 (then the last lambda tried is used).
    """

    name = "fang"

    @classmethod
    def from_config(cls, settings, setup: AttackSetup) -> "Fang":
        return cls(setup.krum_f)

    def __init__(self, f: int, threshold: float = LAMBDA_THRESHOLD):
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"f must be an integer >= 0, got {f!r}")
        self.f = f
        self.threshold = float(threshold)
        self.last_lambda: float | None = None

    def craft(self, updates: Tensor, malicious: Tensor, context: AttackContext) -> Tensor:
        m = int(malicious.sum())
        if m == 0:
            return updates.new_zeros(0, updates.shape[1])
        n = updates.shape[0]
        direction = torch.sign(updates.mean(dim=0))
        benign = updates[~malicious]
        lam = fang_lambda_bound(benign if benign.shape[0] else updates, n, m)
        krum = Krum(self.f)
        candidate = updates.clone()
        while True:
            candidate[malicious] = -lam * direction
            chosen = krum(candidate).kept[0]
            if bool(malicious[chosen]) or lam / 2 < self.threshold:
                break
            lam /= 2
        self.last_lambda = lam
        return (-lam * direction).expand(m, -1).clone()


class MinMax(ModelPoisoningAttack):
    """Shejwalkar and Houmansadr's Min-Max with the (negative) standard-deviation direction.

    mal = mean - lambda * std, lambda the largest found by their search (start 10, the step halving
    until it is below 1e-5) with max_i ||mal - u_i||^2 <= max_{i,j} ||u_i - u_j||^2.
    """

    name = "min_max"

    def __init__(self, start: float = MIN_MAX_START, threshold: float = LAMBDA_THRESHOLD):
        self.start = float(start)
        self.threshold = float(threshold)
        self.last_lambda: float | None = None

    def search(self, updates: Tensor) -> tuple[Tensor, float]:
        rows = updates.double()
        mean, std = _mean_and_std(rows)
        bound = float(torch.cdist(rows, rows).square().max())
        lam, step, succeeded = self.start, self.start / 2, 0.0
        while abs(succeeded - lam) > self.threshold:
            crafted = mean - lam * std
            if float((rows - crafted).square().sum(dim=1).max()) <= bound:
                succeeded = lam
                lam += step
            else:
                lam -= step
            step /= 2
        return (mean - succeeded * std).to(updates.dtype), succeeded

    def craft(self, updates: Tensor, malicious: Tensor, context: AttackContext) -> Tensor:
        m = int(malicious.sum())
        if m == 0:
            return updates.new_zeros(0, updates.shape[1])
        row, self.last_lambda = self.search(updates)
        return row.expand(m, -1).clone()


# ----------------------------------------------------------------------------------------------
# PoisonedFL


def alignment_threshold(d: int, confidence: float) -> float:
    """The `confidence` quantile of Binomial(d, 1/2), normal approximation: d/2 + z*sqrt(d)/2.

    At 0.99 this reproduces the PoisonedFL code's hard-coded k_99 values (d = 139,960 -> 70,415);
    at 0.5 it is d/2, the "more than half aligned" rule of the summary in the report."""
    z = statistics.NormalDist().inv_cdf(confidence) if confidence != 0.5 else 0.0
    return d / 2 + z * math.sqrt(d) / 2


@dataclass
class PoisonedFLSettings:
    scale: float = setting(8.0, "float", low=0, low_open=True, help="c_0, the starting scale factor")
    beta: float = setting(0.7, "float", low=0, high=1, low_open=True, high_open=True,
                          help="c <- beta * c when the model did not move along s")
    check_period: int = setting(50, "int", low=1, help="rounds between alignment checks")
    min_scale: float = setting(0.5, "float", low=0, help="c is not shrunk below this")
    confidence: float = setting(0.99, "float", low=0.5, high=1, high_open=True,
                                help="alignment test quantile of Binomial(d, 1/2); 0.5 = more than half")
    noise: float = setting(0.0, "float", low=0, help="noise adaptation, relative to the update norm")
    flip_prob: float = setting(0.0, "float", low=0, high=0.5, help="sign flipping probability per coordinate")
    coordinates: str = setting("shared", "str", choices=POISONEDFL_COORDINATES,
                               help="partitioned: the attackers split the coordinates")


class PoisonedFL(ModelPoisoningAttack):
    """PoisonedFL (Xie, Fang, Gong, CVPR 2025): multi-round consistent model poisoning.

    State: a random sign vector `s` drawn once from the seed, the scale factor `c` (starts at
    `scale`), the mean malicious row last submitted, and the global parameters at the last
    alignment check.

    Round t, with g = the last global update:
      h   = g - ||g|| / ||k|| * k        (k = the last submitted malicious mean; h = g if none yet)
      v   = |h| / ||h||                  (per-coordinate magnitude template, unit norm)
      row = c * ||g|| * v * s            (every attacker; zeros in round 0, which has no g)
    Every `check_period` rounds (t = P, 2P, ...) the attackers count the coordinates where
    sign(w_t - w_{t-P}) equals s; below `alignment_threshold(d, confidence)` (the model did not
    drift along s) c shrinks to `beta * c`, unless that would go below `min_scale`.

    Variants (each attacker draws its own randomness from the round generator):
      noise       > 0: add N(0, (noise * ||row|| / sqrt(d))^2) per coordinate ("noise adaptation")
      flip_prob   > 0: flip each coordinate of s with this probability ("sign flipping")
      coordinates = partitioned: the round's attackers split the coordinates at random; each sends
                    the row on its own share only, rescaled to the full row's norm, so the
                    uploads are no longer alike (the report's proposed extension).
    """

    name = "poisonedfl"
    settings = PoisonedFLSettings

    @classmethod
    def from_config(cls, settings: PoisonedFLSettings, setup: AttackSetup) -> "PoisonedFL":
        return cls(setup.num_parameters, seed=setup.seed, **dataclasses.asdict(settings))

    def __init__(
        self,
        num_parameters: int,
        seed: int = 0,
        scale: float = 8.0,
        beta: float = 0.7,
        check_period: int = 50,
        min_scale: float = 0.5,
        confidence: float = 0.99,
        noise: float = 0.0,
        flip_prob: float = 0.0,
        coordinates: str = "shared",
    ):
        if coordinates not in POISONEDFL_COORDINATES:
            raise ValueError(f"coordinates must be one of {', '.join(POISONEDFL_COORDINATES)}, got {coordinates!r}")
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta!r}")
        if not 0.5 <= confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence!r}")
        self.num_parameters = int(num_parameters)
        self.scale0 = float(scale)
        self.beta = float(beta)
        self.check_period = int(check_period)
        self.min_scale = float(min_scale)
        self.confidence = float(confidence)
        self.noise = float(noise)
        self.flip_prob = float(flip_prob)
        self.coordinates = coordinates
        generator = rng.torch_stream(seed, rng.POISONEDFL_DIRECTION)
        draw = torch.randn(self.num_parameters, generator=generator, dtype=torch.float64)
        self.direction = torch.where(draw >= 0, 1.0, -1.0).to(torch.float32)
        self.scale = self.scale0
        self.last_malicious: Tensor | None = None
        self.anchor: Tensor | None = None
        self.scale_history: list[tuple[int, float]] = []

    # -- the per-round pieces, each checkable by hand ------------------------------------------

    def template(self, last_global_update: Tensor) -> Tensor:
        """v = |h| / ||h|| with h the global update less the attackers' own last contribution."""
        g = last_global_update.double()
        g_norm = g.norm()
        h = g
        if self.last_malicious is not None:
            k = self.last_malicious.to(g.device).double()
            k_norm = k.norm()
            if k_norm > 0:
                h = g - g_norm / k_norm * k
        h_norm = h.norm()
        if h_norm == 0:
            return torch.zeros_like(g)
        return h.abs() / h_norm

    def check_alignment(self, round: int, global_params: Tensor) -> None:
        """At rounds P, 2P, ...: shrink c when the model did not move along s since the last check."""
        if round % self.check_period != 0:
            return
        params = global_params.detach().to("cpu", torch.float64)
        if self.anchor is not None:
            moved = torch.sign(params - self.anchor)
            aligned = int((moved == self.direction.double()).sum())
            if aligned < alignment_threshold(self.num_parameters, self.confidence) and (
                self.scale * self.beta >= self.min_scale
            ):
                self.scale *= self.beta
        self.anchor = params.clone()

    def craft(self, updates: Tensor, malicious: Tensor, context: AttackContext) -> Tensor:
        if updates.shape[1] != self.num_parameters:
            raise ValueError(f"PoisonedFL was built for {self.num_parameters} parameters, the updates have {updates.shape[1]}")
        self.check_alignment(context.round, context.global_params)
        self.scale_history.append((int(context.round), self.scale))
        m = int(malicious.sum())
        if m == 0:
            return updates.new_zeros(0, updates.shape[1])
        g = context.last_global_update
        if g is None:
            rows = updates.new_zeros(m, updates.shape[1])  # nothing to scale by yet
            self.last_malicious = None
            return rows
        g_cpu = g.detach().to("cpu", torch.float64)
        magnitude = self.template(g_cpu) * (self.scale * g_cpu.norm())
        rows = self._variants(magnitude, m, context.generator)
        self.last_malicious = rows.mean(dim=0).to(torch.float32)
        return rows.to(device=updates.device, dtype=updates.dtype)

    def _variants(self, magnitude: Tensor, m: int, generator: torch.Generator) -> Tensor:
        d = magnitude.shape[0]
        signs = self.direction.double().expand(m, -1).clone()
        if self.flip_prob > 0:
            flips = torch.rand(m, d, generator=generator, dtype=torch.float64) < self.flip_prob
            signs[flips] *= -1
        rows = magnitude * signs
        if self.coordinates == "partitioned" and m > 1:
            owner = torch.randperm(d, generator=generator) % m
            full_norm = rows.norm(dim=1, keepdim=True)
            rows = rows * (owner[None, :] == torch.arange(m)[:, None])
            share_norm = rows.norm(dim=1, keepdim=True)
            rows = torch.where(share_norm > 0, rows * full_norm / share_norm.clamp(min=1e-300), rows)
        if self.noise > 0:
            spread = self.noise * rows.norm(dim=1, keepdim=True) / math.sqrt(d)
            rows = rows + spread * torch.randn(m, d, generator=generator, dtype=torch.float64)
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction.clone(),
            "scale": self.scale,
            "last_malicious": None if self.last_malicious is None else self.last_malicious.clone(),
            "anchor": None if self.anchor is None else self.anchor.clone(),
            "scale_history": list(self.scale_history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.direction = state["direction"].clone()
        self.scale = float(state["scale"])
        self.last_malicious = None if state["last_malicious"] is None else state["last_malicious"].clone()
        self.anchor = None if state["anchor"] is None else state["anchor"].clone()
        self.scale_history = [tuple(item) for item in state["scale_history"]]


# ----------------------------------------------------------------------------------------------
# attacks on DP-FL


class AttackDPFL(ModelPoisoningAttack):
    """Qi et al.'s Attack-DPFL: the malicious client's own update G (un-noised; trained with the
    client attack, e.g. the backdoor) times A = ||DP(G)|| / ||G||, DP(G) = clip(G) + N(0, sigma^2 I)
    drawn from the noise stream the client would have used had it followed the protocol. The
    upload has the norm of an honest noisy upload and carries no noise."""

    name = "attack_dpfl"
    remove_mean = False
    requires_privacy = True
    uploads_own_update = True

    def craft(self, updates: Tensor, malicious: Tensor, context: AttackContext) -> Tensor:
        privacy = context.privacy
        if privacy is None:
            raise ConfigError(
                f"model_poisoning.type={self.name} rescales to the norm of a DP-noised update, but privacy.type=none; "
                "fix: --set privacy.type=gaussian"
            )
        rows = updates[malicious]
        clients = [context.clients[i] for i in malicious.nonzero().flatten().tolist()]
        generators = [noise_generator(context.seed, client, context.round) for client in clients]
        noisy_norms = privacy.privatize(rows, generators).norm(dim=1, keepdim=True)
        poisoned = rows - rows.mean(dim=1, keepdim=True) if self.remove_mean else rows
        norms = poisoned.norm(dim=1, keepdim=True)
        return torch.where(norms > 0, poisoned * noisy_norms / norms.clamp(min=1e-30), poisoned)


class AttackDPFLAdaptive(AttackDPFL):
    """Attack-DPFL after removing the update's own coordinate mean: the upload's mean is zero,
    so its Robust-DPFL detection score |mean| is zero, below every noisy benign upload's."""

    name = "attack_dpfl_adaptive"
    remove_mean = True


MODEL_POISONING: dict[str, type[ModelPoisoningAttack] | None] = {
    "none": None,
    "lie": LittleIsEnough,
    "fang": Fang,
    "min_max": MinMax,
    "poisonedfl": PoisonedFL,
    "attack_dpfl": AttackDPFL,
    "attack_dpfl_adaptive": AttackDPFLAdaptive,
    "ipm": IPM,
    "model_replacement": ModelReplacement,
}


def build_model_poisoning(section, *, num_parameters: int, seed: int, krum_f: int) -> ModelPoisoningAttack | None:
    """The attack for the `model_poisoning` config section (None for `type: none`); its own
    settings are `model_poisoning.<type>` (e.g. `model_poisoning.poisonedfl.scale`).

    `krum_f` is the Byzantine count the server's Krum assumes (what `fang` simulates)."""
    kind = section.type
    if kind not in MODEL_POISONING:
        raise ConfigError(
            f"model_poisoning.type={kind!r} is not one of {', '.join(MODEL_POISONING)}; "
            "fix: --set model_poisoning.type=none"
        )
    attack = MODEL_POISONING[kind]
    if attack is None:
        return None
    raw = section.get(kind) if isinstance(section, dict) else getattr(section, kind, None)
    settings = settings_from(attack.settings, raw)
    check_settings(settings, f"model_poisoning.{kind}.")
    return attack.from_config(settings, AttackSetup(num_parameters, seed, krum_f))
