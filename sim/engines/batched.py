"""The batched engine: one device trains a round's clients stacked along a new leading dimension.

Row k of every parameter tensor is client k; `ClientTraining` (the same client computation the
sequential engine runs) drives the steps, and this engine supplies the gradients: `vmap` of
`grad_and_value` over a `functional_call` of the model, one call per group of rows. The update
rule then runs once for the whole stack; with LeadFL that is one `leadfl_ext` call with a
per-row `alpha`.

Results equal the sequential engine's up to float rounding (vmapped convolutions sum in another
order), not bit for bit. When the stacked clients do not fit in memory they run in chunks of
`client_chunk` clients (default: as many as half the free memory holds, from an estimate).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Sequence

from sim.data import Dataset
from sim.engines.client_training import ClientTraining
from sim.engines.sequential import ClientStateOfEngine, check_client_ids
from sim.errors import ConfigError
from sim.lazy import F, func, torch
from sim.models import AUTO_MEMORY_FORMAT, build_model, trainable_parameters

if TYPE_CHECKING:
    from torch import Tensor

# Share of the free memory the stacked clients may take when `client_chunk` is not set.
MEMORY_SHARE = 0.5
# Parameter-sized tensors held per client (W, momentum, gradients, lookahead, deltas, noise,
# the vmap temporaries), and live copies of each activation per sample (forward values, their
# gradients, vmap's reshaped copies), for the chunk-size estimate.
PARAMETER_COPIES = 14
ACTIVATION_COPIES = 4


def check_memory_format(training) -> None:
    """The batched engine trains contiguous tensors only: its rows are `[n, ...]` stacks (5-D for
    a conv weight), which have no channels_last layout, and vmap folds the clients into grouped
    convolutions, where stacks laid out client by client in NHWC ran no faster on a CPU
    (bench/results/train_step_cpu.md). `auto` is contiguous here (sim.models.memory_format_name)."""
    memory_format = getattr(training, "memory_format", "contiguous")
    if memory_format not in ("contiguous", AUTO_MEMORY_FORMAT):
        raise ConfigError(
            f"training.memory_format = {memory_format!r} is not allowed with the batched engine, which stacks "
            "clients into tensors that have no channels_last layout; allowed there: contiguous or auto. Set "
            "training.memory_format=contiguous, or engine=sequential (one client at a time, where channels_last "
            "applies)."
        )


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
        if isinstance(output, torch.Tensor):
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


class _VmapGradients:
    """`Gradients` for a stack of rows: `vmap(grad_and_value(loss))` over `functional_call`."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        def loss(params, x, y):
            return F.cross_entropy(func.functional_call(model, dict(zip(names, params)), (x,)), y)

        def blended_loss(params, x, y, poisoned_x, poisoned_y, weight):
            # Two forward passes, so BatchNorm normalises clean and triggered images separately.
            return weight * loss(params, poisoned_x, poisoned_y) + (1.0 - weight) * loss(params, x, y)

        self._task = func.vmap(func.grad_and_value(loss))
        self._blended = func.vmap(func.grad_and_value(blended_loss), in_dims=(0, 0, 0, 0, 0, None))

    def task(self, params, x, y):
        grads, losses = self._task(params, x, y)
        return list(grads), losses

    def blended(self, params, x, y, poisoned_x, poisoned_y, weight):
        grads, _ = self._blended(params, x, y, poisoned_x, poisoned_y, weight)
        return list(grads)


class BatchedEngine(ClientStateOfEngine):
    """Trains the selected clients stacked along dim 0 on one device; see the module docstring.

    Arguments as for `SequentialEngine`, plus `client_chunk`, the most clients stacked at once
    (None: from free memory).
    """

    def __init__(self, model_name: str, dataset: Dataset, client_indices: Sequence[Tensor], malicious, training,
                 attack, client_defense, seed: int, device, rounds: int | None = None,
                 client_chunk: int | None = None):
        check_memory_format(training)
        if client_chunk is not None and (isinstance(client_chunk, bool) or not isinstance(client_chunk, int) or client_chunk < 1):
            raise ConfigError(
                f"client_chunk={client_chunk!r} must be a whole number >= 1 (clients stacked at once) or null "
                "to size chunks from free memory; fix: --set client_chunk=100"
            )
        self.device = torch.device(device)
        self.dataset = dataset
        self.client_indices = [indices.to(self.device) for indices in client_indices]
        self.malicious = frozenset(int(client) for client in malicious)
        self.client_chunk = client_chunk
        self.batch_size = int(training.batch_size)

        # The model is only a template: its own parameters are never trained, `functional_call`
        # swaps in each row's.
        self.model = build_model(model_name, dataset.image_shape, dataset.num_classes).to(self.device)
        named = trainable_parameters(self.model)
        names = [name for name, _ in named]
        self.shapes = [tuple(param.shape) for _, param in named]
        self.sizes = [param.numel() for _, param in named]
        self.num_parameters = sum(self.sizes)
        self.dtype = named[0][1].dtype
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.gradients = _VmapGradients(self.model, names)
        self.training = ClientTraining(dataset, training, attack, client_defense, names=names, seed=seed,
                                       rounds=rounds, device=self.device, shapes=self.shapes, malicious=malicious)
        self._activation_floats = None

    def chunk_size(self, num_clients: int) -> int:
        """Clients stacked at once: `client_chunk`, or as many as half the free memory holds."""
        if self.client_chunk is not None:
            return max(1, min(self.client_chunk, num_clients))
        if self._activation_floats is None:
            self._activation_floats = _activations_per_sample(self.model, self.dataset.image_shape, self.device)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        poisoning = self.training.poisoning
        passes = 1 if poisoning is None else max(1, poisoning.passes_per_step)
        image_floats = math.prod(self.dataset.image_shape)
        per_client = itemsize * (
            PARAMETER_COPIES * self.num_parameters
            + self.batch_size * passes * (ACTIVATION_COPIES * self._activation_floats + 2 * image_floats)
        )
        fits = int(MEMORY_SHARE * _available_memory(self.device)) // max(per_client, 1)
        return max(1, min(num_clients, fits))

    def train_clients(self, global_params: Tensor, clients: list[int], round: int,
                      roles: Sequence[str] | None = None) -> Tensor:
        """As `SequentialEngine.train_clients`."""
        global_params = global_params.detach().to(self.device)
        if global_params.dim() != 1 or global_params.numel() != self.num_parameters:
            raise ValueError(
                f"global parameters have shape {tuple(global_params.shape)}; this model needs a 1-D vector of "
                f"{self.num_parameters} values"
            )
        check_client_ids(clients, len(self.client_indices))
        roles = self.training.roles(clients, self.malicious) if roles is None else list(roles)
        updates = torch.empty(len(clients), self.num_parameters, dtype=global_params.dtype, device=self.device)
        if not clients:
            return updates
        chunks = torch.split(global_params.to(self.dtype), self.sizes)
        chunk = self.chunk_size(len(clients))
        for start in range(0, len(clients), chunk):
            stop = min(start + chunk, len(clients))
            n = stop - start
            params = [part.view(1, *shape).repeat(n, *([1] * len(shape))) for part, shape in zip(chunks, self.shapes)]
            self.training.run(self.gradients, params, global_params, clients[start:stop], roles[start:stop],
                              [self.client_indices[client] for client in clients[start:stop]], round,
                              updates[start:stop])
        return updates
