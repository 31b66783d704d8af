"""Client-side defenses that act on a benign client's local training.

* `none`: plain local SGD.
* `ldp`: after every local step except the first of each local epoch, `lr * Laplace(0, b)`
  noise is added to every `weight` tensor (conv/linear weights and BatchNorm scales).
* `flwbc` (FL-WBC): the same noise, kept only on the elements whose gradient changed less
  than the noise since the previous step: it is zeroed where `|g_i - g_{i-1}| > |noise|`.
* `leadfl`: the LeadFL regularised update, which replaces the optimizer step itself; it runs
  through `leadfl_ext` and lives in `sim.engines.schedules`.

Malicious clients never run a client defense. The noise defenses follow the LeadFL authors'
code: the noise goes straight onto the parameters (not through the momentum), with no gradient
clipping, so `ldp` is a perturbation defense rather than a differential-privacy guarantee.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sim.errors import ConfigError

CLIENT_DEFENSE_TYPES = ("none", "ldp", "flwbc", "leadfl")
LEADFL_VARIANTS = ("hessian", "paper", "original")

# The largest float32 below 1: keeps the inverse CDF finite when the uniform draw is exactly 0.
_UNIFORM_BELOW_ONE = 1.0 - 2.0**-24


def laplace_(out: Tensor, scale: float, generator: torch.Generator | None = None) -> Tensor:
    """Fills `out` in place with i.i.d. Laplace(0, `scale`) samples drawn from `generator`.

    Inverse CDF of one uniform per element: with v uniform on [-1, 1),
    `-scale * sign(v) * log(1 - |v|)` is Laplace(0, scale).
    """
    out.uniform_(-1.0, 1.0, generator=generator)
    return uniform_to_laplace_(out, scale)


def uniform_to_laplace_(out: Tensor, scale: float) -> Tensor:
    """Turns uniform draws on [-1, 1) in `out` into Laplace(0, `scale`) samples, in place.

    Split from `laplace_` so many clients' rows, each drawn from its own generator, are
    transformed in one pass.
    """
    sign = torch.sign(out)
    out.abs_().clamp_(max=_UNIFORM_BELOW_ONE).neg_().log1p_().mul_(sign).mul_(-float(scale))
    return out


def is_regularised_name(name: str) -> bool:
    """Whether a parameter is a `weight` tensor (the set LDP, FL-WBC and LeadFL `original` touch)."""
    return "weight" in name


class NoClientDefense:
    """Plain local training."""

    name = "none"

    def start_local_training(self, generator: torch.Generator | None) -> None:
        pass

    def after_step(self, step_in_epoch: int, grads: list[Tensor] | tuple[Tensor, ...]) -> None:
        pass


class LaplaceNoiseDefense:
    """`ldp`: Laplace noise on the `weight` tensors after each step but an epoch's first.

    Built once for a model's parameter list and reused for every client; the noise for all
    `weight` tensors is drawn into one flat buffer, so a step costs a few vectorised ops and no
    allocation the size of the model.
    """

    name = "ldp"

    def __init__(self, names: list[str], params: list[Tensor], *, lr: float, noise_scale: float):
        if not noise_scale >= 0:
            raise ConfigError(
                f"client_defense.noise_scale = {noise_scale!r} must be >= 0 (the Laplace scale b). "
                "Set it to e.g. 0.2."
            )
        self.lr = float(lr)
        self.noise_scale = float(noise_scale)
        self.weight_positions = [i for i, name in enumerate(names) if is_regularised_name(name)]
        self.weight_params = [params[i].detach() for i in self.weight_positions]
        sizes = [param.numel() for param in self.weight_params]
        first = self.weight_params[0] if self.weight_params else params[0]
        self._noise = torch.empty(sum(sizes), dtype=first.dtype, device=first.device)
        self._noise_views = [chunk.view_as(param) for chunk, param in zip(self._noise.split(sizes), self.weight_params)]
        self.generator: torch.Generator | None = None

    def start_local_training(self, generator: torch.Generator | None) -> None:
        self.generator = generator

    def after_step(self, step_in_epoch: int, grads: list[Tensor] | tuple[Tensor, ...]) -> None:
        if step_in_epoch == 0 or not self.weight_params:
            return
        laplace_(self._noise, self.noise_scale, self.generator)
        self._add_noise()

    @torch.no_grad()
    def _add_noise(self) -> None:
        torch._foreach_add_(self.weight_params, self._noise_views, alpha=self.lr)


class FLWBCDefense(LaplaceNoiseDefense):
    """`flwbc`: the `ldp` noise, zeroed where `|g_i - g_{i-1}| > |noise|` element-wise.

    `g_{i-1}` is the previous step's gradient of the same tensor within the same local epoch
    (the first step of an epoch adds no noise and only records its gradient).
    """

    name = "flwbc"

    def __init__(self, names: list[str], params: list[Tensor], *, lr: float, noise_scale: float):
        super().__init__(names, params, lr=lr, noise_scale=noise_scale)
        self._grad_now = torch.empty_like(self._noise)
        self._grad_before = torch.empty_like(self._noise)
        self._scratch = torch.empty_like(self._noise)

    def after_step(self, step_in_epoch: int, grads: list[Tensor] | tuple[Tensor, ...]) -> None:
        if not self.weight_params:
            return
        torch.cat([grads[i].detach().reshape(-1) for i in self.weight_positions], out=self._grad_now)
        if step_in_epoch > 0:
            laplace_(self._noise, self.noise_scale, self.generator)
            changed = torch.sub(self._grad_now, self._grad_before, out=self._scratch).abs_()
            self._noise.masked_fill_(changed > self._noise.abs(), 0.0)
            self._add_noise()
        self._grad_now, self._grad_before = self._grad_before, self._grad_now


def build_client_defense(client_defense, names: list[str], params: list[Tensor], *, lr: float):
    """The noise defense (or none) for the `client_defense` config section; `leadfl` returns
    `NoClientDefense` because its work is done by the LeadFL optimizer step instead."""
    kind = client_defense.type
    if kind not in CLIENT_DEFENSE_TYPES:
        raise ConfigError(
            f"client_defense.type = {kind!r} is not a known client defense; allowed: "
            f"{', '.join(CLIENT_DEFENSE_TYPES)}. Set client_defense.type to one of these."
        )
    if kind == "ldp":
        return LaplaceNoiseDefense(names, params, lr=lr, noise_scale=client_defense.noise_scale)
    if kind == "flwbc":
        return FLWBCDefense(names, params, lr=lr, noise_scale=client_defense.noise_scale)
    if kind == "leadfl" and client_defense.variant not in LEADFL_VARIANTS:
        raise ConfigError(
            f"client_defense.variant = {client_defense.variant!r} is not a LeadFL variant; allowed: "
            f"{', '.join(LEADFL_VARIANTS)}. Set client_defense.variant to one of these."
        )
    return NoClientDefense()
