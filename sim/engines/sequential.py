"""The sequential engine: the selected clients one after another on one model instance.

Each client is `ClientTraining` on one row: the rows are `[1, ...]` views of the model's own
parameters, so loading the global vector is one in-place copy, a minibatch is an index gather
from the dataset tensors already on the device, and gradients come from plain autograd.

With `training.memory_format: channels_last` (or `auto` on a CPU) the model's 4-D tensors (conv
weights) and the image batches are NHWC in memory, which the CPU convolutions run faster; the rows
stay views of those parameters, each gradient is returned in its parameter's layout (the
leadfl_ext ops pair elements by their place in memory), and the flat vectors keep their logical
order.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Sequence

from sim.data import Dataset
from sim.engines.client_training import ClientTraining
from sim.lazy import F, torch
from sim.models import (
    batchnorm_layers,
    build_model,
    in_layout,
    load_flat_parameters_,
    memory_format_of,
    trainable_parameters,
)

if TYPE_CHECKING:
    from torch import Tensor


def check_client_ids(clients: Sequence[int], num_clients: int) -> None:
    for client in clients:
        if not 0 <= client < num_clients:
            raise ValueError(f"client id {client} is out of range 0..{num_clients - 1}")


class _ModelGradients:
    """`Gradients` for one row by autograd on a model; rows other than the model's own (the
    LeadFL lookahead point) are evaluated on a twin, so the model itself is never swapped."""

    def __init__(self, model: torch.nn.Module, memory_format: torch.memory_format):
        self.model = model
        self.params = [param for _, param in trainable_parameters(model)]
        self.rows = [param.detach().unsqueeze(0) for param in self.params]
        self._twin = None
        self.memory_format = memory_format
        self._reformat = memory_format != torch.contiguous_format

    def _images(self, x: Tensor) -> Tensor:
        """One row's `[B, C, H, W]` images in the model's memory format."""
        return x.contiguous(memory_format=self.memory_format) if self._reformat and x.dim() == 4 else x

    def _rows_of(self, grads) -> list[Tensor]:
        """`[1, ...]` gradient rows, each in its parameter's memory layout."""
        if self._reformat:
            grads = [in_layout(g, p) for g, p in zip(grads, self.params)]
        return [g.unsqueeze(0) for g in grads]

    def _module(self, params: list[Tensor]) -> tuple[torch.nn.Module, list[Tensor]]:
        if params is self.rows:
            return self.model, self.params
        if self._twin is None:
            self._twin = copy.deepcopy(self.model)
        twin_params = [param for _, param in trainable_parameters(self._twin)]
        with torch.no_grad():
            torch._foreach_copy_([param.detach() for param in twin_params], [row[0] for row in params])
        return self._twin, twin_params

    def task(self, params, x, y):
        model, leaves = self._module(params)
        loss = F.cross_entropy(model(self._images(x[0])), y[0])
        grads = torch.autograd.grad(loss, leaves)
        return self._rows_of(grads), loss.detach().reshape(1)

    def blended(self, params, x, y, poisoned_x, poisoned_y, weight):
        model, leaves = self._module(params)
        # Two forward passes, so BatchNorm normalises clean and triggered images separately.
        loss_backdoor = F.cross_entropy(model(self._images(poisoned_x[0])), poisoned_y[0])
        loss_clean = F.cross_entropy(model(self._images(x[0])), y[0])
        grads = torch.autograd.grad(weight * loss_backdoor + (1.0 - weight) * loss_clean, leaves)
        return self._rows_of(grads)


class ClientStateOfEngine:
    """What both engines expose of their `ClientTraining` (`self.training`, with `client_indices`,
    `malicious` and `model`): the per-client state for the checkpoint, the BatchNorm counters, and the
    last global update for an attack that reads it."""

    def state_dict(self):
        """The client defense's per-client state (None without any), for the checkpoint."""
        return self.training.state_dict()

    def load_state_dict(self, state) -> None:
        self.training.load_state_dict(state)

    @property
    def needs_last_global_update(self) -> bool:
        return self.training.needs_last_global_update

    def observe_global_update(self, update) -> None:
        """What the last round added to the global model (for an attack that reads it)."""
        self.training.observe_global_update(update)

    def batchnorm_counters(self, clients: list[int], roles: Sequence[str] | None = None) -> Tensor:
        """`[len(clients), L]` float64: the forward passes each client's round adds to each of
        the model's L BatchNorm layers' counters (`ClientTraining.forward_passes`)."""
        check_client_ids(clients, len(self.client_indices))
        roles = self.training.roles(clients, self.malicious) if roles is None else list(roles)
        return self.training.batchnorm_counters(roles, [self.client_indices[c] for c in clients],
                                                batchnorm_layers(self.model))


class SequentialEngine(ClientStateOfEngine):
    """Trains the selected clients one after another on one device with one model instance.

    `client_indices[k]` are client k's sample indices into the training set; `malicious` is
    the set of malicious client ids. `training`, `attack` and `client_defense` are the config
    sections of those names; `rounds` the run's length (for the learning-rate schedule).
    """

    def __init__(self, model_name: str, dataset: Dataset, client_indices: Sequence[Tensor], malicious, training,
                 attack, client_defense, seed: int, device, rounds: int | None = None):
        self.device = torch.device(device)
        self.client_indices = [indices.to(self.device) for indices in client_indices]
        self.malicious = frozenset(int(client) for client in malicious)
        memory_format = memory_format_of(training, self.device)
        self.model = build_model(model_name, dataset.image_shape, dataset.num_classes).to(self.device)
        if memory_format != torch.contiguous_format:
            self.model = self.model.to(memory_format=memory_format)
        self.gradients = _ModelGradients(self.model, memory_format)
        named = trainable_parameters(self.model)
        names = [name for name, _ in named]
        self.num_parameters = sum(row.numel() for row in self.gradients.rows)
        self.training = ClientTraining(dataset, training, attack, client_defense, names=names, seed=seed,
                                       rounds=rounds, device=self.device,
                                       shapes=[tuple(param.shape) for _, param in named], malicious=malicious)

    def train_clients(self, global_params: Tensor, clients: list[int], round: int,
                      roles: Sequence[str] | None = None) -> Tensor:
        """[len(clients), d] updates, one row per client in the order of `clients`; `roles`
        overrides each client's role (default: from the malicious set)."""
        check_client_ids(clients, len(self.client_indices))
        global_params = global_params.detach().to(self.device)
        roles = self.training.roles(clients, self.malicious) if roles is None else list(roles)
        updates = torch.empty(len(clients), self.num_parameters, dtype=global_params.dtype, device=self.device)
        for row, (client, role) in enumerate(zip(clients, roles)):
            load_flat_parameters_(self.model, global_params)
            self.training.run(self.gradients, self.gradients.rows, global_params, [client], [role],
                              [self.client_indices[client]], round, updates[row : row + 1])
        return updates
