"""Client defenses as per-step update rules on stacked per-client tensors (docs/algorithms.md §1).

Every tensor an update rule touches carries the clients on dim 0: row k of each parameter,
gradient and state tensor belongs to the k-th client being trained. The sequential engine is
the case of one row (its tensors are `[1, ...]` views of one model's parameters), the batched
engine stacks a whole chunk of clients. A rule never computes a gradient: the engine hands it
the task gradient (and, for rules with `needs_lookahead`, the gradient at the lookahead point
`W - lr*g` on the same batch), so the maths below exists once for every engine.

A rule applies its defense to the rows marked `defended` (the benign clients; malicious clients
never run a client defense) and plain momentum SGD to the others. Rows that have finished their
local steps get zero gradients from then on; `finish_rows` zeroes their momentum so every rule
leaves them exactly where they are.

* `none` (`SGD`): momentum SGD, `v = mu*v + g`, `W -= lr*v`.
* `ldp` (`LaplaceNoise`): the SGD step, then `lr * Laplace(0, b)` noise on every regularised
  tensor after every step but the first of each local epoch (docs/algorithms.md §1.4).
* `flwbc` (`FLWBC`): the same noise, zeroed where `|g_i - g_{i-1}| > |noise|`.
* `leadfl`, by `variant` (docs/algorithms.md §1.1-§1.3, §1.5): `hessian` (`LeadFLHessian`),
  `paper` (`LeadFLPaper`), `original` (`LeadFLOriginal`), and the ablations `drift`
  (`LeadFLDrift`: SGD plus the uniform push `-lr*alpha*q`) and `curvature` (`LeadFLCurvature`:
  `hessian` without the identity). `client_defense.scope` picks the tensors a LeadFL variant
  regularises; `client_defense.momentum_reset: never` keeps `original`'s momentum per client
  across rounds (state the checkpoint saves).

Every rule declares the settings it reads (`settings`, a dataclass of `sim.settings.setting`
fields beside its class); the `client_defense` config section is made from these declarations
(`sim.config`), and `reported` names the ones a run's summary always lists (the others only off
their defaults). The section is flat (`client_defense.alpha`, not `client_defense.leadfl.alpha`):
the LeadFL variants share their settings, `ldp` and `flwbc` theirs, and the published results and
their comparisons are keyed by these names. A setting two rules declare must be declared alike.

Adding a client defense or a LeadFL variant is one subclass of `UpdateRule` plus its entry in
`CLIENT_DEFENSES` or `LEADFL_VARIANTS`; see docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from sim.errors import ConfigError
from sim.lazy import no_grad, torch
from sim.models import parameter_shapes
from sim.rng import noise_generator
from sim.settings import FLOAT32_MAX, setting

if TYPE_CHECKING:
    from torch import Tensor

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
    """Turns uniform draws on [-1, 1) in `out` into Laplace(0, `scale`) samples, in place, so
    many clients' rows, each drawn from its own generator, are transformed in one pass."""
    sign = torch.sign(out)
    out.abs_().clamp_(max=_UNIFORM_BELOW_ONE).neg_().log1p_().mul_(sign).mul_(-float(scale))
    return out


def is_regularised_name(name: str) -> bool:
    """Whether a parameter is a `weight` tensor (conv/linear weights and BatchNorm scales): the
    set the noise defenses and LeadFL `original` touch, as in the authors' code."""
    return "weight" in name


# `client_defense.scope` values besides a list of parameter names (null: the variant's default).
SCOPES = ("all", "weight", "conv")
MOMENTUM_RESETS = ("round", "never")


def scope_flags(scope, names: Sequence[str], shapes: Sequence[Sequence[int]] | None) -> list[bool]:
    """Which parameter tensors a LeadFL variant regularises under `scope`: `all`; `weight` (names
    containing "weight", as the authors' code); `conv` (the convolution kernels: weight tensors of
    three or more dimensions); or a list of parameter names, each of which must exist."""
    if isinstance(scope, str):
        if scope == "all":
            return [True] * len(names)
        if scope == "weight":
            return [is_regularised_name(name) for name in names]
        if scope == "conv":
            if shapes is None:
                raise ValueError("scope 'conv' needs the parameter shapes")
            flags = [is_regularised_name(name) and len(shape) >= 3 for name, shape in zip(names, shapes, strict=True)]
            if not any(flags):
                raise ConfigError(
                    "client_defense.scope = 'conv' selects no tensor: the model has no convolution (its parameters: "
                    f"{', '.join(names)}). Set client_defense.scope to all, weight or a list of these names."
                )
            return flags
        raise ConfigError(
            f"client_defense.scope = {scope!r} is not allowed; allowed: {', '.join(SCOPES)}, null (the variant's "
            "default) or a list of parameter names. Set e.g. client_defense.scope=weight."
        )
    if isinstance(scope, (list, tuple)) and scope and all(isinstance(name, str) for name in scope):
        unknown = [name for name in scope if name not in names]
        if unknown:
            raise ConfigError(
                f"client_defense.scope names {', '.join(repr(n) for n in unknown)}, which the model does not have; "
                f"its parameters: {', '.join(names)}. Set client_defense.scope to a list of these (or all, weight, conv)."
            )
        chosen = set(scope)
        return [name in chosen for name in names]
    raise ConfigError(
        f"client_defense.scope = {scope!r} must be one of {', '.join(SCOPES)}, null, or a non-empty list of "
        f"parameter names (the model's: {', '.join(names)}). Set e.g. client_defense.scope=weight."
    )


def _rows_index(rows: Sequence[int], device) -> Tensor:
    return torch.tensor(list(rows), dtype=torch.int64, device=device)


def _column(mask: Tensor, like: Tensor) -> Tensor:
    """A per-row value shaped to broadcast over a `[n, ...]` tensor."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


class UpdateRule:
    """Momentum SGD on stacked rows: the client defense `none`, and the base of every rule.

    Built once per engine from the `client_defense` section (the constructor owns the checks of
    the settings it reads), then `start` prepares the state of one set of rows before their
    local training and `step` applies one local step to them.
    """

    # Whether `step` reads the gradient at the lookahead point W - lr*g of its defended rows.
    needs_lookahead = False
    # Whether the rule keeps per-client state across rounds (then it trains every row, defended
    # or not, and `state_dict` holds that state by client id).
    keeps_client_state = False
    # The settings the rule reads (a dataclass of `setting` fields; None: none) and those a run's
    # summary always lists (`sim.reporting.key_settings`; the others where off their defaults).
    settings: type | None = None
    reported: tuple[str, ...] = ()

    @classmethod
    def title(cls, settings) -> str:
        """The defense in a plot title."""
        return settings.type

    @classmethod
    def check_available(cls) -> None:
        """Refuses, with the fix, when what the rule runs on cannot be loaded (called by a run
        before any data is read; settings validation stays free of libraries)."""

    def __init__(self, settings, *, momentum: float, names: Sequence[str], shapes: Sequence[Sequence[int]] | None = None):
        self.momentum = float(momentum)
        self.names = list(names)
        self.shapes = None if shapes is None else [tuple(shape) for shape in shapes]
        self.regularised = [is_regularised_name(name) for name in self.names]

    def start(self, params: list[Tensor], defended: Sequence[bool], *, clients: Sequence[int], seed: int, round: int) -> None:
        """Fresh state for local training of the rows of `params` (one per client in `clients`)."""
        self.params = params
        self.n = params[0].shape[0]
        self.device = params[0].device
        self.defended = [bool(flag) for flag in defended]
        self.momentum_buffers = [torch.zeros_like(p) for p in params] if self.momentum else None

    @no_grad
    def finish_rows(self, rows: Sequence[int]) -> None:
        """Rows `rows` have taken their last step (called once per row, at the latest after the
        last step of all): their momentum is zeroed so that zero gradients leave them in place."""
        if self.momentum_buffers is not None:
            index = _rows_index(rows, self.device)
            for buffer in self.momentum_buffers:
                buffer.index_fill_(0, index, 0.0)

    @no_grad
    def step(self, grads: list[Tensor], lookahead: list[Tensor] | None, active: Sequence[bool],
             step_in_epoch: Sequence[int], lr: float) -> None:
        """One local step of every row; `active[k]` is False once row k has finished."""
        if self.momentum_buffers is not None:
            torch._foreach_mul_(self.momentum_buffers, self.momentum)
            torch._foreach_add_(self.momentum_buffers, grads)
            torch._foreach_add_(self.params, self.momentum_buffers, alpha=-lr)
        else:
            torch._foreach_add_(self.params, grads, alpha=-lr)

    # Per-client state kept across rounds (none here): `{client id: state}`.
    def client_state(self, clients: Sequence[int] | None = None) -> dict:
        return {}

    def load_client_state(self, entries: dict) -> None:
        pass

    def clear_client_state(self) -> None:
        pass


SGD = UpdateRule


@dataclass
class NoiseSettings:
    noise_scale: float = setting(0.2, "float", low=0, help="ldp / flwbc: the Laplace scale b of the per-step noise")


class LaplaceNoise(UpdateRule):
    """`ldp`: the SGD step, then Laplace noise on the regularised tensors of the defended rows.

    Each row's noise comes from its client's own `(seed, client, round)` stream, drawn into one
    flat `[n, width]` buffer that all rows then turn into Laplace noise in one pass.
    """

    settings = NoiseSettings
    reported = ("noise_scale",)

    def __init__(self, settings, *, momentum: float, names: Sequence[str], shapes=None):
        super().__init__(settings, momentum=momentum, names=names, shapes=shapes)
        if not settings.noise_scale >= 0:
            raise ConfigError(
                f"client_defense.noise_scale = {settings.noise_scale!r} must be >= 0 (the Laplace scale b). "
                "Set it to e.g. 0.2."
            )
        self.noise_scale = float(settings.noise_scale)
        self.positions = [k for k, flag in enumerate(self.regularised) if flag]

    def start(self, params, defended, *, clients, seed, round) -> None:
        super().start(params, defended, clients=clients, seed=seed, round=round)
        self.generators = [
            noise_generator(seed, client, round, self.device) if flag else None for client, flag in zip(clients, self.defended)
        ]
        self.noised_params = [params[k] for k in self.positions]
        sizes = [params[k][0].numel() for k in self.positions]
        self.noise = params[0].new_zeros(self.n, sum(sizes))
        self.noise_views = [part.view_as(p) for part, p in zip(self.noise.split(sizes, dim=1), self.noised_params)]

    @no_grad
    def step(self, grads, lookahead, active, step_in_epoch, lr) -> None:
        super().step(grads, lookahead, active, step_in_epoch, lr)
        if self.positions:
            self._add_noise(grads, active, step_in_epoch, lr)

    def _draw(self, active, step_in_epoch) -> list[int]:
        """Draws the noise of the rows that get some this step (none at an epoch's first step)
        and zeroes the other rows; returns the drawn rows."""
        drawn = [row for row in range(self.n) if self.defended[row] and active[row] and step_in_epoch[row] > 0]
        if drawn:
            for row in drawn:
                self.noise[row].uniform_(-1.0, 1.0, generator=self.generators[row])
            uniform_to_laplace_(self.noise, self.noise_scale)
            if len(drawn) < self.n:
                keep = torch.zeros(self.n, 1, dtype=torch.bool, device=self.device)
                keep[drawn] = True
                self.noise.masked_fill_(~keep, 0.0)
        return drawn

    def _add_noise(self, grads, active, step_in_epoch, lr) -> None:
        if self._draw(active, step_in_epoch):
            torch._foreach_add_(self.noised_params, self.noise_views, alpha=lr)


class FLWBC(LaplaceNoise):
    """`flwbc`: the `ldp` noise, zeroed where `|g_i - g_{i-1}| > |noise|` element-wise, with
    `g_{i-1}` the previous step's gradient of the same row."""

    def start(self, params, defended, *, clients, seed, round) -> None:
        super().start(params, defended, clients=clients, seed=seed, round=round)
        self.grad_now = torch.zeros_like(self.noise)
        self.grad_before = torch.zeros_like(self.noise)

    def _add_noise(self, grads, active, step_in_epoch, lr) -> None:
        torch.cat([grads[k].reshape(self.n, -1) for k in self.positions], dim=1, out=self.grad_now)
        if self._draw(active, step_in_epoch):
            changed = torch.sub(self.grad_now, self.grad_before).abs_()
            self.noise.masked_fill_(changed > self.noise.abs(), 0.0)
            torch._foreach_add_(self.noised_params, self.noise_views, alpha=lr)
        self.grad_now, self.grad_before = self.grad_before, self.grad_now


def _import_leadfl_ext():
    try:
        import leadfl_ext
    except ImportError as error:
        raise ConfigError(
            f"client_defense.type = 'leadfl' needs the leadfl_ext package, which failed to import "
            f"({error}). Build and install it with `pip install -e .` from the repository root."
        ) from error
    return leadfl_ext


class LeadFL(UpdateRule):
    """The settings every LeadFL variant shares: `alpha`, the clip bound `q` and the `scope` of
    regularised tensors (`default_scope` when the setting is null); `LeadFLSettings`, declared
    after the variants' registry (its `variant` choices are that registry's keys)."""

    default_scope = "all"
    reported = ("variant", "alpha", "q")

    @classmethod
    def title(cls, settings) -> str:
        return f"leadfl ({settings.variant}, alpha {settings.alpha:g})"

    @classmethod
    def check_available(cls) -> None:
        _import_leadfl_ext()

    @classmethod
    def check_with(cls, settings, training) -> None:
        """The checks that need other sections: `lr * alpha` must stay a float32."""
        if training.lr * settings.alpha > FLOAT32_MAX:
            raise ConfigError(
                f"training.lr * client_defense.alpha = {training.lr:g} * {settings.alpha:g} is beyond float32's "
                f"largest value ({FLOAT32_MAX:.4g}): every defended update would be Inf; fix: --set "
                "client_defense.alpha=0.4"
            )

    @classmethod
    def check(cls, settings, names: Sequence[str], shapes: Sequence[Sequence[int]] | None) -> list[bool]:
        """The checks of the settings against a model's parameter `names` (and `shapes`), without
        building anything; returns the `scope_flags`."""
        if not settings.q > 0:
            raise ConfigError(f"client_defense.q = {settings.q!r} must be > 0 (the clip bound). Set it to e.g. 0.2.")
        if not settings.alpha >= 0:
            raise ConfigError(f"client_defense.alpha = {settings.alpha!r} must be >= 0. Set it to e.g. 0.4.")
        scope = getattr(settings, "scope", None)
        flags = scope_flags(cls.default_scope if scope is None else scope, names, shapes)
        reset = getattr(settings, "momentum_reset", "round")
        if reset not in MOMENTUM_RESETS:
            raise ConfigError(
                f"client_defense.momentum_reset = {reset!r} is not allowed; allowed: {', '.join(MOMENTUM_RESETS)}. "
                "Set client_defense.momentum_reset=round."
            )
        if reset != "round" and not cls.carries_momentum_option:
            raise ConfigError(
                f"client_defense.momentum_reset = {reset!r} applies to client_defense.variant=original only (the "
                f"authors' optimizer), not to {settings.variant!r}. Set client_defense.momentum_reset=round."
            )
        return flags

    def __init__(self, settings, *, momentum: float, names: Sequence[str], shapes=None):
        super().__init__(settings, momentum=momentum, names=names, shapes=shapes)
        self.regularised = self.check(settings, self.names, self.shapes)
        self.alpha = float(settings.alpha)
        self.q = float(settings.q)
        self.ext = _import_leadfl_ext()

    # Whether the variant reads `momentum_reset` (only `original`).
    carries_momentum_option = False

    def row_alpha(self, active: Sequence[bool]) -> float | Tensor:
        """`alpha` on the defended, active rows and 0 elsewhere (plain SGD for an undefended
        row; a finished row with its zero gradient must not move by `alpha * R`): one float
        when every row gets it, else a per-row tensor."""
        rows = [self.defended[row] and active[row] for row in range(self.n)]
        if all(rows):
            return self.alpha
        return torch.tensor([self.alpha if flag else 0.0 for flag in rows], dtype=torch.float64, device=self.device)


class _LeadFLFused(LeadFL):
    """`hessian`, `paper`, `drift`, `curvature`: one `leadfl_ext` call per step over the
    regularised tensors of every row (plain SGD on the others), with momentum on the task
    gradient only: `W -= lr*mu*v_prev`, the LeadFL op, then `v = mu*v_prev + g`."""

    def start(self, params, defended, *, clients, seed, round) -> None:
        super().start(params, defended, clients=clients, seed=seed, round=round)
        self.positions = [k for k, flag in enumerate(self.regularised) if flag]
        self.others = [k for k, flag in enumerate(self.regularised) if not flag]
        self.regularised_params = [params[k] for k in self.positions]
        self.other_params = [params[k] for k in self.others]

    @no_grad
    def step(self, grads, lookahead, active, step_in_epoch, lr) -> None:
        if self.momentum_buffers is not None:
            torch._foreach_mul_(self.momentum_buffers, self.momentum)
            torch._foreach_add_(self.params, self.momentum_buffers, alpha=-lr)
        if not self.others:  # every tensor regularised (scope `all`)
            self.leadfl_step(self.params, grads, lookahead, self.row_alpha(active), lr)
        else:
            if self.positions:
                self.leadfl_step(self.regularised_params, [grads[k] for k in self.positions],
                                 None if lookahead is None else [lookahead[k] for k in self.positions],
                                 self.row_alpha(active), lr)
            torch._foreach_add_(self.other_params, [grads[k] for k in self.others], alpha=-lr)
        if self.momentum_buffers is not None:
            torch._foreach_add_(self.momentum_buffers, grads)

    def leadfl_step(self, params, grads, lookahead, alpha, lr) -> None:
        """The LeadFL op on `params` (the regularised tensors) and their `grads` / `lookahead`."""
        raise NotImplementedError


class LeadFLHessian(_LeadFLFused):
    """§1.1: `R = clamp(1 - (g~ - g), -q, q)` with `g~` the gradient at `W - lr*g`."""

    needs_lookahead = True

    def leadfl_step(self, params, grads, lookahead, alpha, lr) -> None:
        self.ext.fused_step_(params, grads, lookahead, lr=lr, alpha=alpha, q=self.q)


class LeadFLCurvature(_LeadFLFused):
    """§1.5: `R = clamp(-(g~ - g), -q, q)`: `hessian` without the identity, the curvature signal
    alone (the fused op with its constant 0)."""

    needs_lookahead = True

    def leadfl_step(self, params, grads, lookahead, alpha, lr) -> None:
        self.ext.fused_step_(params, grads, lookahead, lr=lr, alpha=alpha, q=self.q, identity=0.0)


class LeadFLDrift(_LeadFLFused):
    """§1.5: SGD plus `-lr*alpha*q` on every regularised element, one gradient per step: the
    uniform push `hessian` reduces to where `R` sits at `+q`. It runs the fused op with `g~ = g`
    and the constant `q`, so `R = clamp(q, -q, q) = q` exactly and the result is `hessian`'s,
    bit for bit, wherever `hessian`'s `R` is `+q`."""

    def leadfl_step(self, params, grads, lookahead, alpha, lr) -> None:
        self.ext.fused_step_(params, grads, grads, lr=lr, alpha=alpha, q=self.q, identity=self.q)


class LeadFLPaper(_LeadFLFused):
    """§1.2: `R = clamp(1 - lr*g - D, -q, q)` with `D` the previous step's total change."""

    def start(self, params, defended, *, clients, seed, round) -> None:
        super().start(params, defended, clients=clients, seed=seed, round=round)
        self.deltas = [torch.zeros_like(params[k]) for k in self.positions]

    def leadfl_step(self, params, grads, lookahead, alpha, lr) -> None:
        self.ext.paper_step_(params, grads, self.deltas, lr=lr, alpha=alpha, q=self.q)
        if self.momentum_buffers is not None:
            # D is the step's total change, the momentum shift included.
            torch._foreach_add_(self.deltas, [self.momentum_buffers[k] for k in self.positions], alpha=-lr)


class LeadFLOriginal(LeadFL):
    """§1.3, the authors' code: the task step on every row, then on the defended rows past
    their epoch's first batch a second step with `h = clamp(g + alpha*u/||u||, -q, q)` on the
    regularised tensors (`clamp(g, -q, q)` on the others), `u = W' - P - G - lr`, momentum
    shared by both steps; `P` and `G` are the weights and last gradient of the previous step.

    With `momentum_reset: never` every client's momentum buffer (benign or malicious rows
    alike, as each client's optimizer in that code) starts where its last round left it: the
    buffers live in a store keyed by client id, which `client_state` exposes to the checkpoint.
    """

    default_scope = "weight"
    carries_momentum_option = True

    def __init__(self, settings, *, momentum: float, names: Sequence[str], shapes=None):
        super().__init__(settings, momentum=momentum, names=names, shapes=shapes)
        self.keeps_client_state = getattr(settings, "momentum_reset", "round") == "never" and self.momentum > 0
        self.client_momentum: dict[int, list[Tensor]] = {}

    def start(self, params, defended, *, clients, seed, round) -> None:
        super().start(params, defended, clients=clients, seed=seed, round=round)
        self.clients = [int(client) for client in clients]
        if self.keeps_client_state:
            for row, client in enumerate(self.clients):
                saved = self.client_momentum.get(client)
                if saved is not None:
                    for buffer, value in zip(self.momentum_buffers, saved, strict=True):
                        buffer[row].copy_(value)
        positions = [k for k, flag in enumerate(self.regularised) if flag]
        # Every row's first batch of an epoch stores P and G before any step reads them.
        self.previous_params = {k: torch.zeros_like(params[k]) for k in positions}
        self.previous_grads = {k: torch.zeros_like(params[k]) for k in positions}

    @no_grad
    def step(self, grads, lookahead, active, step_in_epoch, lr) -> None:
        mu, n = self.momentum, self.n
        # The task step as `leadfl_ext.reference.original_step_` writes it (W -= lr * v).
        if self.momentum_buffers is not None:
            torch._foreach_mul_(self.momentum_buffers, mu)
            torch._foreach_add_(self.momentum_buffers, grads)
            torch._foreach_sub_(self.params, torch._foreach_mul(self.momentum_buffers, lr))
        else:
            torch._foreach_sub_(self.params, torch._foreach_mul(grads, lr))
        second_step = [self.defended[row] and active[row] and step_in_epoch[row] > 0 for row in range(n)]
        last_grads = list(grads)
        if any(second_step):
            everyone = all(second_step)  # then the row masks are skipped (same values, less work)
            mask = torch.tensor(second_step, device=self.device)
            for k, (w, g) in enumerate(zip(self.params, grads)):
                column = _column(mask, w)
                h = g.clone()
                if self.regularised[k]:
                    u = w - self.previous_params[k] - self.previous_grads[k] - lr
                    norm = torch.linalg.vector_norm(u.reshape(n, -1), dim=1).reshape(-1, *([1] * (w.dim() - 1)))
                    h += torch.where(norm > 0, self.alpha * u / norm, 0.0)
                h.clamp_(-self.q, self.q)
                if everyone:
                    if self.momentum_buffers is not None:
                        buffer = self.momentum_buffers[k].mul_(mu).add_(h)
                        w.sub_(lr * buffer)
                    else:
                        w.sub_(lr * h)
                    last_grads[k] = h
                    continue
                if self.momentum_buffers is not None:
                    buffer = self.momentum_buffers[k]
                    buffer.copy_(torch.where(column, buffer * mu + h, buffer))
                    w.copy_(torch.where(column, w - lr * buffer, w))
                else:
                    w.copy_(torch.where(column, w - lr * h, w))
                last_grads[k] = torch.where(column, h, g)
        for k in self.previous_params:
            self.previous_params[k].copy_(self.params[k])
            self.previous_grads[k].copy_(last_grads[k])

    @no_grad
    def finish_rows(self, rows) -> None:
        if self.keeps_client_state:
            for row in rows:
                self.client_momentum[self.clients[row]] = [buffer[row].clone() for buffer in self.momentum_buffers]
        super().finish_rows(rows)

    def client_state(self, clients=None) -> dict:
        """`{client: {"momentum": [tensors on the CPU]}}` for `clients` (default: every client
        the store holds)."""
        chosen = self.client_momentum if clients is None else {c: self.client_momentum[c] for c in clients
                                                                if c in self.client_momentum}
        return {int(c): {"momentum": [t.detach().cpu().clone() for t in value]} for c, value in chosen.items()}

    def clear_client_state(self) -> None:
        self.client_momentum.clear()

    def load_client_state(self, entries: dict) -> None:
        for client, state in entries.items():
            self.client_momentum[int(client)] = [t.clone() for t in state["momentum"]]


# config name (`client_defense.type`) -> rule; `leadfl` picks its class by `client_defense.variant`.
CLIENT_DEFENSES: dict[str, type[UpdateRule]] = {"none": SGD, "ldp": LaplaceNoise, "flwbc": FLWBC, "leadfl": LeadFL}
LEADFL_VARIANTS: dict[str, type[LeadFL]] = {
    "hessian": LeadFLHessian,
    "paper": LeadFLPaper,
    "original": LeadFLOriginal,
    "drift": LeadFLDrift,
    "curvature": LeadFLCurvature,
}


@dataclass
class LeadFLSettings:
    variant: str = setting("hessian", "str", choices=tuple(LEADFL_VARIANTS), help="leadfl: the update rule")
    alpha: float = setting(0.4, "float", low=0, help="leadfl: the regulariser's weight")
    q: float = setting(0.2, "float", low=0, low_open=True, help="leadfl: the clip bound of R")
    # null: the variant's own (weight for original, all for the others); see `scope_flags`.
    scope: str | list[str] | None = setting(None, "str_or_list", nullable=True,
                                            help="leadfl: all | weight | conv | [names] regularised; null: the variant's")
    momentum_reset: str = setting("round", "str", choices=MOMENTUM_RESETS,
                                  help="leadfl original: round (fresh momentum) | never (kept per client)")


LeadFL.settings = LeadFLSettings


def client_defense_class(settings) -> type[UpdateRule]:
    """The rule class for the `client_defense` section, or a `ConfigError` naming the choices."""
    kind = settings.type
    if kind not in CLIENT_DEFENSES:
        raise ConfigError(
            f"client_defense.type = {kind!r} is not a known client defense; allowed: "
            f"{', '.join(CLIENT_DEFENSES)}. Set client_defense.type to one of these."
        )
    if kind != "leadfl":
        return CLIENT_DEFENSES[kind]
    if settings.variant not in LEADFL_VARIANTS:
        raise ConfigError(
            f"client_defense.variant = {settings.variant!r} is not a LeadFL variant; allowed: "
            f"{', '.join(LEADFL_VARIANTS)}. Set client_defense.variant to one of these."
        )
    return LEADFL_VARIANTS[settings.variant]


def check_client_defense(settings, model: str, input_shape: str, num_classes: int) -> None:
    """Checks the `client_defense` section against `model`'s declared parameter names and shapes
    (`sim.models.parameter_shapes`: nothing is built), so a bad setting (a scope naming a
    parameter the model lacks) is reported before any data is loaded."""
    rule = client_defense_class(settings)
    if settings.type != "leadfl":
        return
    shape = tuple(int(part) for part in input_shape.split("x"))
    named = parameter_shapes(model, shape, num_classes)
    rule.check(settings, [name for name, _ in named], [param_shape for _, param_shape in named])


def build_update_rule(settings, *, momentum: float, names: Sequence[str],
                      shapes: Sequence[Sequence[int]] | None = None) -> UpdateRule:
    """The update rule of the `client_defense` section for a model with parameters `names` of
    per-client shapes `shapes`."""
    return client_defense_class(settings)(settings, momentum=momentum, names=names, shapes=shapes)
