"""The batched engine: one device trains all of a round's clients together.

The selected clients' parameters are stacked along a new leading dimension (row k = client k)
and every local step is computed for all of them at once with `torch.func`: `functional_call`
runs the model on one client's parameters, `grad_and_value` differentiates its loss, and
`vmap` maps both over the rows. The parameter update then runs once for the whole stack; with
LeadFL that is ONE call of `leadfl_ext.fused_step_` (`hessian`) or `paper_step_` (`paper`) with
a per-row `alpha` (0 for the rows that do not run LeadFL, e.g. malicious clients).

It computes what `SequentialEngine` computes (see `sim.engines.schedules`), client by client:

* the same minibatches: every client's `BatchPlan` comes from `plan_batches` and its
  `(seed, client, round)` order stream; label-flip shifts from the same stream;
* the same noise: each `ldp` / `flwbc` row is drawn from the client's own noise generator into
  its own row, then all rows are turned into Laplace noise in one pass;
* the same roles: backdoor rows take the blended loss with a per-row MGDA weight
  (`mgda_backdoor_weights`), label-flip rows shift their labels, benign rows run the client
  defense, malicious rows never do; a malicious update is scaled by `attack.boost`.

Clients may need different numbers of steps or have a short last batch: at each step the
active rows are grouped by batch length (BatchNorm normalises over the batch, so padding would
change the maths), each group is one vmapped gradient call, and a finished client's row gets a
zero gradient and zero momentum, which leaves its parameters exactly as they are.

Results equal the sequential engine's up to float rounding (vmapped convolutions sum in another
order), not bit for bit. When the stacked clients do not fit in memory they run in chunks of
`client_chunk` clients (default: as many as half the free memory holds, from an estimate).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from sim.attacks.data_poisoning import draw_label_shifts, flip_labels, mgda_backdoor_weights, poison_batch
from sim.data import Dataset
from sim.defenses.client import is_regularised_name, uniform_to_laplace_
from sim.errors import ConfigError
from sim.models import build_model, trainable_parameters
from sim.engines.schedules import (
    _import_leadfl_ext,
    local_lr,
    noise_generator,
    plan_batches,
    validate_training_settings,
)

# Share of the free memory the stacked clients may take when `client_chunk` is not set.
MEMORY_SHARE = 0.5
# Parameter-sized tensors held per client (W, momentum, gradients, lookahead, deltas, noise,
# the vmap temporaries), and live copies of each activation per sample (forward values, their
# gradients, vmap's reshaped copies), for the chunk-size estimate.
PARAMETER_COPIES = 14
ACTIVATION_COPIES = 4

_NOISE_DEFENSES = ("ldp", "flwbc")


def choose_engine(device) -> tuple[str, str]:
    """What `engine: auto` runs on `device`, and why (one line for the log).

    A rule, not a measurement, so the choice (and with it the float rounding of a run) does not
    depend on the load of the machine at start-up. `bench/sim_throughput.py` is its evidence:
    on a CPU a local step is compute-bound and vmap turns each convolution into a grouped one,
    which the CPU kernels run slower than the plain loop's; on a GPU one client's step leaves
    the device mostly idle, and stacking clients fills it.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "batched", "on a GPU, stacked clients fill the device where one client at a time leaves it idle"
    return "sequential", f"on {device.type}, a plain loop per client outruns vmapped steps; see bench/results/sim_throughput_cpu.md"


def _available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _activations_per_sample(model: torch.nn.Module, image_shape: tuple[int, int, int], device) -> int:
    """Floats the model's layers output for one sample (what autograd keeps, roughly)."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, Tensor):
            total += output[0].numel()

    leaves = [module for module in model.modules() if not list(module.children())]
    handles = [module.register_forward_hook(count) for module in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(2, *image_shape, device=device, dtype=next(model.parameters()).dtype))  # 2: BatchNorm needs > 1 value
    finally:
        for handle in handles:
            handle.remove()
    return total


class BatchedEngine:
    """Trains the selected clients stacked along dim 0 on one device; see the module docstring.

    Arguments as for `SequentialEngine`; `rounds` is the run's length (for the learning-rate
    schedule) and `client_chunk` the most clients stacked at once (None: from free memory).
    """

    name = "batched"

    def __init__(
        self,
        model_name: str,
        dataset: Dataset,
        client_indices: Sequence[Tensor],
        malicious,
        training,
        attack,
        client_defense,
        seed: int,
        device,
        rounds: int | None = None,
        client_chunk: int | None = None,
    ):
        validate_training_settings(training, attack, client_defense, dataset.num_classes)
        if client_chunk is not None and (isinstance(client_chunk, bool) or not isinstance(client_chunk, int) or client_chunk < 1):
            raise ConfigError(
                f"client_chunk={client_chunk!r} must be a whole number >= 1 (clients stacked at once) or null "
                "to size chunks from free memory; fix: --set client_chunk=100"
            )
        if client_defense.type in _NOISE_DEFENSES and not client_defense.noise_scale >= 0:
            raise ConfigError(
                f"client_defense.noise_scale = {client_defense.noise_scale!r} must be >= 0 (the Laplace scale b). "
                "Set it to e.g. 0.2."
            )
        self.device = torch.device(device)
        self.dataset = dataset
        self.client_indices = [indices.to(self.device) for indices in client_indices]
        self.malicious = frozenset(int(client) for client in malicious)
        self.seed = int(seed)
        self.rounds = rounds
        self.client_chunk = client_chunk
        self.training = training
        self.attack = attack
        self.client_defense = client_defense
        self.momentum = float(training.momentum)
        self.batch_size = int(training.batch_size)
        self.num_classes = dataset.num_classes

        # The model is only a template: its own parameters are never trained, `functional_call`
        # swaps in each row's.
        self.model = build_model(model_name, dataset.image_shape, dataset.num_classes).to(self.device)
        named = trainable_parameters(self.model)
        self.names = [name for name, _ in named]
        self.shapes = [tuple(param.shape) for _, param in named]
        self.sizes = [param.numel() for _, param in named]
        self.num_parameters = sum(self.sizes)
        self.dtype = named[0][1].dtype
        self.regularised = [is_regularised_name(name) for name in self.names]
        self.weight_positions = [k for k, flag in enumerate(self.regularised) if flag]
        self.num_weight_values = sum(self.sizes[k] for k in self.weight_positions)
        for param in self.model.parameters():
            param.requires_grad_(False)

        self.noise_defense = client_defense.type if client_defense.type in _NOISE_DEFENSES else None
        self.leadfl_variant = client_defense.variant if client_defense.type == "leadfl" else None
        self.leadfl_ext = _import_leadfl_ext() if self.leadfl_variant in ("hessian", "paper") else None
        self.trigger_hi = dataset.trigger_hi.to(self.device)
        self.trigger_lo = dataset.trigger_lo.to(self.device)

        model, names = self.model, self.names

        def loss(params, x, y):
            return F.cross_entropy(functional_call(model, dict(zip(names, params)), (x,)), y)

        weight = float(attack.blend_weight)

        def blended_loss(params, x, poisoned_x, y, poisoned_y):
            # Two forward passes, so BatchNorm normalises clean and triggered images separately.
            return weight * loss(params, poisoned_x, poisoned_y) + (1.0 - weight) * loss(params, x, y)

        # Row-wise (gradients, loss): params, images and labels all carry the client dim first.
        self._task_grad = vmap(grad_and_value(loss))
        self._blended_grad = vmap(grad_and_value(blended_loss))
        self._activation_floats = None

    # ---------------------------------------------------------------------------------------

    def chunk_size(self, num_clients: int) -> int:
        """Clients stacked at once: `client_chunk`, or as many as half the free memory holds."""
        if self.client_chunk is not None:
            return max(1, min(self.client_chunk, num_clients))
        if self._activation_floats is None:
            self._activation_floats = _activations_per_sample(self.model, self.dataset.image_shape, self.device)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        passes = 2 if self.attack.type == "backdoor" else 1
        image_floats = math.prod(self.dataset.image_shape)
        per_client = itemsize * (
            PARAMETER_COPIES * self.num_parameters
            + self.batch_size * passes * (ACTIVATION_COPIES * self._activation_floats + 2 * image_floats)
        )
        fits = int(MEMORY_SHARE * _available_memory(self.device)) // max(per_client, 1)
        return max(1, min(num_clients, fits))

    def train_clients(self, global_params: Tensor, clients: list[int], round: int) -> Tensor:
        global_params = global_params.detach().to(self.device)
        if global_params.dim() != 1 or global_params.numel() != self.num_parameters:
            raise ValueError(
                f"global parameters have shape {tuple(global_params.shape)}; this model needs a 1-D vector of "
                f"{self.num_parameters} values"
            )
        for client in clients:
            if not 0 <= client < len(self.client_indices):
                raise ValueError(f"client id {client} is out of range 0..{len(self.client_indices) - 1}")
        updates = torch.empty(len(clients), self.num_parameters, dtype=global_params.dtype, device=self.device)
        if not clients:
            return updates
        chunk = self.chunk_size(len(clients))
        for start in range(0, len(clients), chunk):
            stop = min(start + chunk, len(clients))
            self._train_chunk(global_params, list(clients[start:stop]), round, updates[start:stop])
        return updates

    # ---------------------------------------------------------------------------------------

    def _train_chunk(self, global_params: Tensor, clients: list[int], round: int, out: Tensor) -> None:
        n = len(clients)
        device = self.device
        lr = local_lr(self.training, round, self.rounds)
        attack_type = self.attack.type
        roles = [attack_type if client in self.malicious else "none" for client in clients]
        defended = [role == "none" for role in roles]  # malicious clients never run a client defense

        plans = [
            plan_batches(self.client_indices[client], self.training, seed=self.seed, client=client, round=round, device=device)
            if self.client_indices[client].numel() > 0
            else None  # a client without data leaves the model unchanged
            for client in clients
        ]
        steps = [plan.num_steps if plan is not None else 0 for plan in plans]

        label_shifts = None
        if "label_flip" in roles:
            label_shifts = torch.zeros(n, max(steps), dtype=torch.int64, device=device)
            for row, (role, plan) in enumerate(zip(roles, plans)):
                if role == "label_flip" and plan is not None:
                    label_shifts[row, : plan.num_steps] = draw_label_shifts(plan.num_steps, self.num_classes, plan.generator).to(device)

        state = _ChunkState(self, global_params, n)
        leadfl_rows = [flag and self.leadfl_variant is not None for flag in defended]
        noise_rows = [flag and self.noise_defense is not None for flag in defended]
        generators = [
            noise_generator(self.seed, client, round, device) if noisy else None
            for client, noisy in zip(clients, noise_rows)
        ]
        alpha_rows = None
        if self.leadfl_variant in ("hessian", "paper"):
            alpha = float(self.client_defense.alpha)
            alpha_rows = torch.tensor([alpha if flag else 0.0 for flag in leadfl_rows], dtype=torch.float64, device=device)

        finished = [False] * n
        for step in range(max(steps)):
            active = [step < count for count in steps]
            newly_finished = [row for row in range(n) if not active[row] and not finished[row]]
            if newly_finished:
                state.finish_rows(newly_finished)
                for row in newly_finished:
                    finished[row] = True
            batches = [plans[row].batch(step) if active[row] else (None, 0) for row in range(n)]
            step_in_epoch = [position for _, position in batches]
            grads, lookahead = self._gradients(state, roles, leadfl_rows, batches, label_shifts, step, lr)
            if self.leadfl_variant in ("hessian", "paper"):
                # A finished row must not move: with a zero gradient, alpha 0 is what keeps
                # the regulariser term (alpha * R, R != 0) off it.
                step_alpha = alpha_rows if all(active) else alpha_rows * torch.tensor(active, device=device)
                state.leadfl_fused_step(grads, lookahead, step_alpha, lr)
            elif self.leadfl_variant == "original":
                second_step = [leadfl_rows[row] and active[row] and step_in_epoch[row] > 0 for row in range(n)]
                state.leadfl_original_step(grads, second_step, lr)
            else:
                state.momentum_sgd_step(grads, lr)
                if self.noise_defense is not None:
                    noisy = [noise_rows[row] and active[row] for row in range(n)]
                    if any(noisy):
                        state.add_noise(grads, noisy, step_in_epoch, generators, lr)

        with torch.no_grad():
            torch.cat([param.reshape(n, -1) for param in state.params], dim=1, out=out)
            out.sub_(global_params)
            if attack_type != "none" and self.attack.boost != 1:
                boosted = [row for row, role in enumerate(roles) if role != "none"]
                if boosted:
                    rows = torch.tensor(boosted, device=device)
                    out.index_copy_(0, rows, out.index_select(0, rows).mul_(float(self.attack.boost)))

    def _gradients(self, state, roles, leadfl_rows, batches, label_shifts, step, lr):
        """Every active row's gradient at this step (zero for finished rows) and, for the
        `hessian` variant, the lookahead gradient of the LeadFL rows (the plain gradient
        elsewhere, where alpha = 0 ignores it)."""
        n = len(roles)
        # Groups of rows that share one vmapped call: same loss kind and same batch length.
        groups: dict[tuple[str, int], list[int]] = {}
        for row, (indices, _) in enumerate(batches):
            if indices is None:
                continue
            kind = "backdoor" if roles[row] == "backdoor" else "task"
            groups.setdefault((kind, int(indices.numel())), []).append(row)

        whole = len(groups) == 1 and len(next(iter(groups.values()))) == n
        grads = None if whole else [torch.zeros(n, *shape, dtype=self.dtype, device=self.device) for shape in self.shapes]
        hessian = self.leadfl_variant == "hessian"
        lookahead = None
        if hessian:
            lookahead = None if whole else [torch.zeros_like(g) for g in grads]

        for (kind, _), rows in groups.items():
            params = state.rows(rows)
            indices = torch.stack([batches[row][0] for row in rows])
            x = self.dataset.train_x[indices]
            y = self.dataset.train_y[indices]
            if kind == "task":
                if label_shifts is not None:
                    row_index = torch.tensor(rows, device=self.device)
                    y = flip_labels(y, label_shifts[row_index, step][:, None], self.num_classes)
                group_grads, _ = self._task_grad(params, x, y)
            else:
                group_grads = self._backdoor_grads(params, x, y)
            group_lookahead = None
            if hessian:
                group_lookahead = list(group_grads)
                leadfl_positions = [position for position, row in enumerate(rows) if leadfl_rows[row]]
                if leadfl_positions:
                    group_lookahead = self._lookahead_grads(params, group_grads, x, y, leadfl_positions, group_lookahead, lr)
            if whole:
                grads, lookahead = list(group_grads), group_lookahead
            else:
                row_index = torch.tensor(rows, device=self.device)
                for full, part in zip(grads, group_grads):
                    full.index_copy_(0, row_index, part)
                if hessian:
                    for full, part in zip(lookahead, group_lookahead):
                        full.index_copy_(0, row_index, part)
        return grads, lookahead

    def _backdoor_grads(self, params, x, y):
        flat_images = x.flatten(0, 1)
        poisoned_x, poisoned_y = poison_batch(flat_images, self.trigger_hi, self.trigger_lo, self.attack.target_label)
        poisoned_x, poisoned_y = poisoned_x.view_as(x), poisoned_y.view_as(y)
        if self.attack.blend != "mgda":
            grads, _ = self._blended_grad(params, x, poisoned_x, y, poisoned_y)
            return grads
        grads_backdoor, loss_backdoor = self._task_grad(params, poisoned_x, poisoned_y)
        grads_clean, loss_clean = self._task_grad(params, x, y)
        rows = x.shape[0]
        weight = mgda_backdoor_weights(
            torch.cat([g.reshape(rows, -1) for g in grads_backdoor], dim=1),
            torch.cat([g.reshape(rows, -1) for g in grads_clean], dim=1),
            loss_backdoor,
            loss_clean,
        ).to(loss_clean.dtype)
        # The gradient of a*L_b + (1-a)*L_c per row, as the sequential engine forms it.
        blended = []
        for g_backdoor, g_clean in zip(grads_backdoor, grads_clean):
            column = weight.reshape(-1, *([1] * (g_backdoor.dim() - 1)))
            blended.append(g_backdoor * column + g_clean * (1.0 - column))
        return blended

    def _lookahead_grads(self, params, grads, x, y, positions, lookahead, lr):
        """g~ = grad L(W - lr*g; same batch) for the LeadFL rows at `positions` of a group."""
        if len(positions) == x.shape[0]:
            sub_params, sub_grads, sub_x, sub_y = params, grads, x, y
        else:
            index = torch.tensor(positions, device=self.device)
            sub_params = [p.index_select(0, index) for p in params]
            sub_grads = [g.index_select(0, index) for g in grads]
            sub_x, sub_y = x.index_select(0, index), y.index_select(0, index)
        with torch.no_grad():
            lookahead_params = torch._foreach_add(sub_params, sub_grads, alpha=-lr)
        lookahead_grads, _ = self._task_grad(lookahead_params, sub_x, sub_y)
        if len(positions) == x.shape[0]:
            return list(lookahead_grads)
        index = torch.tensor(positions, device=self.device)
        return [full.index_copy(0, index, part) for full, part in zip(lookahead, lookahead_grads)]


class _ChunkState:
    """The stacked per-client state of one chunk: parameters, momentum, LeadFL and FL-WBC
    memory, and the updates applied to all rows at once."""

    def __init__(self, engine: BatchedEngine, global_params: Tensor, n: int):
        self.engine = engine
        self.n = n
        device, dtype = engine.device, engine.dtype
        chunks = torch.split(global_params.to(dtype), engine.sizes)
        self.params = [chunk.view(1, *shape).repeat(n, *([1] * len(shape))) for chunk, shape in zip(chunks, engine.shapes)]
        self.momentum = [torch.zeros_like(p) for p in self.params] if engine.momentum else None
        variant = engine.leadfl_variant
        self.deltas = [torch.zeros_like(p) for p in self.params] if variant == "paper" else None
        if variant == "original":
            # P and G of SPEC 1.3 for the `weight` tensors; every row's first batch of an epoch
            # stores them before any step reads them.
            self.previous_params = {k: torch.zeros_like(self.params[k]) for k in engine.weight_positions}
            self.previous_grads = {k: torch.zeros_like(self.params[k]) for k in engine.weight_positions}
        if engine.noise_defense is not None and engine.weight_positions:
            width = engine.num_weight_values
            self.noise = torch.zeros(n, width, dtype=dtype, device=device)
            self.noise_views = self._weight_views(self.noise)
            if engine.noise_defense == "flwbc":
                self.grad_now = torch.zeros(n, width, dtype=dtype, device=device)
                self.grad_before = torch.zeros(n, width, dtype=dtype, device=device)
        self.weight_params = [self.params[k] for k in engine.weight_positions]

    def _weight_views(self, flat: Tensor) -> list[Tensor]:
        sizes = [self.engine.sizes[k] for k in self.engine.weight_positions]
        shapes = [self.engine.shapes[k] for k in self.engine.weight_positions]
        return [part.view(self.n, *shape) for part, shape in zip(flat.split(sizes, dim=1), shapes)]

    def rows(self, rows: list[int]) -> list[Tensor]:
        if len(rows) == self.n:
            return self.params
        index = torch.tensor(rows, device=self.engine.device)
        return [p.index_select(0, index) for p in self.params]

    @torch.no_grad()
    def finish_rows(self, rows: list[int]) -> None:
        # A finished row gets zero gradients from now on; with zero momentum too, every update
        # below leaves its parameters exactly as they are.
        if self.momentum is not None:
            index = torch.tensor(rows, device=self.engine.device)
            for buffer in self.momentum:
                buffer.index_fill_(0, index, 0.0)

    @torch.no_grad()
    def momentum_sgd_step(self, grads: list[Tensor], lr: float) -> None:
        mu = self.engine.momentum
        if self.momentum is not None:
            torch._foreach_mul_(self.momentum, mu)
            torch._foreach_add_(self.momentum, grads)
            torch._foreach_add_(self.params, self.momentum, alpha=-lr)
        else:
            torch._foreach_add_(self.params, grads, alpha=-lr)

    @torch.no_grad()
    def leadfl_fused_step(self, grads, lookahead, alpha_rows: Tensor, lr: float) -> None:
        """All rows through one fused-op call: LeadFL rows with their alpha, the others with
        alpha 0 (plain SGD), momentum carrying the task gradient as in the sequential engine."""
        engine = self.engine
        ext, q = engine.leadfl_ext, float(engine.client_defense.q)
        if self.momentum is not None:
            torch._foreach_mul_(self.momentum, engine.momentum)
            torch._foreach_add_(self.params, self.momentum, alpha=-lr)
        if engine.leadfl_variant == "hessian":
            ext.fused_step_(self.params, grads, lookahead, lr=lr, alpha=alpha_rows, q=q)
        else:
            ext.paper_step_(self.params, grads, self.deltas, lr=lr, alpha=alpha_rows, q=q)
            if self.momentum is not None:
                torch._foreach_add_(self.deltas, self.momentum, alpha=-lr)
        if self.momentum is not None:
            torch._foreach_add_(self.momentum, grads)

    @torch.no_grad()
    def leadfl_original_step(self, grads, second_step: list[bool], lr: float) -> None:
        """SPEC 1.3 for every row at once: the task step everywhere, the clipped regulariser
        step on the rows in `second_step` (LeadFL rows past their epoch's first batch), with one
        L2 norm per tensor and row."""
        engine = self.engine
        mu = engine.momentum
        alpha, q = float(engine.client_defense.alpha), float(engine.client_defense.q)
        # The task step as `leadfl_ext.reference.original_step_` writes it (W -= lr * v).
        if self.momentum is not None:
            torch._foreach_mul_(self.momentum, mu)
            torch._foreach_add_(self.momentum, grads)
            torch._foreach_sub_(self.params, torch._foreach_mul(self.momentum, lr))
        else:
            torch._foreach_sub_(self.params, torch._foreach_mul(grads, lr))
        last_grads = list(grads)
        if any(second_step):
            mask = torch.tensor(second_step, device=engine.device)
            for k, (w, g) in enumerate(zip(self.params, grads)):
                column = mask.reshape(-1, *([1] * (w.dim() - 1)))
                h = g.clone()
                if engine.regularised[k]:
                    u = w - self.previous_params[k] - self.previous_grads[k] - lr
                    norm = torch.linalg.vector_norm(u.reshape(self.n, -1), dim=1).reshape_as(column)
                    h += torch.where(norm > 0, alpha * u / norm, torch.zeros_like(u))
                h.clamp_(-q, q)
                if self.momentum is not None:
                    buffer = self.momentum[k]
                    buffer.copy_(torch.where(column, buffer * mu + h, buffer))
                    w.copy_(torch.where(column, w - lr * buffer, w))
                else:
                    w.copy_(torch.where(column, w - lr * h, w))
                last_grads[k] = torch.where(column, h, g)
        for k in engine.weight_positions:
            self.previous_params[k].copy_(self.params[k])
            self.previous_grads[k].copy_(last_grads[k])

    @torch.no_grad()
    def add_noise(self, grads, noisy: list[bool], step_in_epoch: list[int], generators, lr: float) -> None:
        """`ldp` / `flwbc` noise on the `weight` tensors of the rows in `noisy`, each row drawn
        from its client's generator, none at the first step of a row's epoch."""
        engine = self.engine
        if not engine.weight_positions:
            return
        flwbc = engine.noise_defense == "flwbc"
        if flwbc:
            torch.cat([grads[k].reshape(self.n, -1) for k in engine.weight_positions], dim=1, out=self.grad_now)
        drawn = [row for row in range(self.n) if noisy[row] and step_in_epoch[row] > 0]
        if drawn:
            for row in drawn:
                self.noise[row].uniform_(-1.0, 1.0, generator=generators[row])
            uniform_to_laplace_(self.noise, float(engine.client_defense.noise_scale))
            if len(drawn) < self.n:
                keep = torch.zeros(self.n, 1, dtype=torch.bool, device=engine.device)
                keep[drawn] = True
                self.noise.masked_fill_(~keep, 0.0)
            if flwbc:
                changed = torch.sub(self.grad_now, self.grad_before).abs_()
                self.noise.masked_fill_(changed > self.noise.abs(), 0.0)
            torch._foreach_add_(self.weight_params, self.noise_views, alpha=lr)
        if flwbc:
            # Rows that did not train this step keep their previous gradient (they never read
            # it again: a finished row stays finished).
            self.grad_now, self.grad_before = self.grad_before, self.grad_now
