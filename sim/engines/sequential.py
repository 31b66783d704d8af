"""Client-training engines: given the global parameters and the selected clients, return
their updates. The round loop only sees the `Engine` protocol, so engines that train clients
differently (one after another, batched, distributed) are interchangeable."""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor

from sim.data import Dataset
from sim.engines.schedules import LocalTrainer


class Engine(Protocol):
    def train_clients(self, global_params: Tensor, clients: list[int], round: int) -> Tensor:
        """[len(clients), d] updates (local - global over the trainable parameters), one row
        per client in the order of `clients`."""
        ...


class SequentialEngine:
    """Trains the selected clients one after another on one device with one model instance.

    `client_indices[k]` are client k's sample indices into the training set; `malicious` is
    the set of malicious client ids. `training`, `attack` and `client_defense` are the config
    sections of those names.
    """

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
    ):
        self.client_indices = [indices.to(torch.device(device)) for indices in client_indices]
        self.malicious = frozenset(int(client) for client in malicious)
        self.seed = int(seed)
        self.trainer = LocalTrainer(model_name, dataset, training, attack, client_defense, device, rounds=rounds)
        self.device = self.trainer.device

    @property
    def num_parameters(self) -> int:
        return self.trainer.num_parameters

    def train_clients(self, global_params: Tensor, clients: list[int], round: int) -> Tensor:
        global_params = global_params.detach().to(self.device)
        updates = torch.empty(len(clients), self.num_parameters, dtype=global_params.dtype, device=self.device)
        for row, client in enumerate(clients):
            if not 0 <= client < len(self.client_indices):
                raise ValueError(f"client id {client} is out of range 0..{len(self.client_indices) - 1}")
            self.trainer.train(
                global_params,
                self.client_indices[client],
                malicious=client in self.malicious,
                seed=self.seed,
                client=client,
                round=round,
                out=updates[row],
            )
        return updates
