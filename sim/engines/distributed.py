"""Several processes share a round: one per device, on one machine or several, under torchrun.

    torchrun --nproc-per-node 4 -m sim run --preset table1-fmnist --device cuda --engine batched

torchrun starts one process per device and tells each its place through the environment
(`WORLD_SIZE`, `RANK`, `LOCAL_RANK`). The runner then joins the process group (NCCL on GPUs,
gloo on CPUs) and wraps the engine in `DistributedEngine`:

* every rank builds the same run: data, partition, selection and aggregator are pure functions
  of the config and seed, so every rank selects the same clients each round;
* each rank trains a contiguous share of the round's clients with its own engine (sequential
  or batched, on its own device);
* the updates meet on every rank (all-gather, in selection order): order statistics such as
  Krum and the median need every update, so every rank aggregates all of them, the same way;
* only rank 0 writes files and prints.

A client's update depends only on the global parameters and `(seed, client, round)`, so the
split changes nothing: with the sequential engine on every rank a distributed run's metrics are
those of a single process, bit for bit.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from sim.errors import ConfigError
from sim.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_RANK = "RANK"
ENV_LOCAL_RANK = "LOCAL_RANK"
ENV_LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={text!r} is not a whole number; torchrun sets it, so launch with "
            "torchrun (or unset it to run as one process)"
        ) from None


def launched_with_several_ranks() -> bool:
    """Whether torchrun (or another launcher with its variables) started several processes."""
    return _env_int(ENV_WORLD_SIZE, 1) > 1


def is_active() -> bool:
    """Whether this process is one rank of several in an initialised process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def world_size() -> int:
    return torch.distributed.get_world_size() if is_active() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_active() else 0


def is_main_process() -> bool:
    """Rank 0, the only process that writes files and prints (any process when alone)."""
    if is_active():
        return torch.distributed.get_rank() == 0
    return _env_int(ENV_RANK, 0) == 0


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: `cuda` means the GPU of index LOCAL_RANK when torchrun started
    several processes on the machine; `cpu` stays `cpu`."""
    device = torch.device(device)
    if device.type != "cuda" or not launched_with_several_ranks():
        return device
    local_rank = _env_int(ENV_LOCAL_RANK, 0)
    local_world = _env_int(ENV_LOCAL_WORLD_SIZE, 1)
    if device.index is not None and local_world > 1:
        raise ConfigError(
            f"device='cuda:{device.index}' pins every one of the {local_world} processes on this machine to one "
            "GPU; allowed under torchrun: cuda (each process takes the GPU of its LOCAL_RANK) or cpu; "
            "fix: --device cuda"
        )
    if device.index is not None:
        return device
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} visible GPU(s); "
            f"fix: torchrun --nproc-per-node {max(torch.cuda.device_count(), 1)}"
        )
    return torch.device("cuda", local_rank)


def init_from_env(device: torch.device | str) -> torch.device:
    """Joins the process group torchrun describes (NCCL for GPUs, gloo for CPUs) and returns
    this rank's device; without several ranks, returns `device` and does nothing."""
    device = rank_device(torch.device(device))
    if not launched_with_several_ranks() or is_active():
        return device
    if not torch.distributed.is_available():
        raise ConfigError(
            f"{ENV_WORLD_SIZE}={os.environ[ENV_WORLD_SIZE]} asks for several processes, but this torch build has no "
            "torch.distributed; fix: run as one process (plain `python -m sim run`)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend)
    return device


def shutdown() -> None:
    """Leaves the process group, if this process joined one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """`obj` as rank `src` has it, on every rank (picklable objects; a no-op when alone)."""
    if not is_active():
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=src)
    return holder[0]


def shares(num_clients: int, num_ranks: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices of the round's clients, one per rank, sizes differing by
    at most one (the first ranks take the extra clients)."""
    base, extra = divmod(num_clients, num_ranks)
    bounds, start = [], 0
    for index in range(num_ranks):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class DistributedEngine:
    """Splits each round's clients over the ranks, trains this rank's share with `inner`, and
    returns every client's update on every rank (rows in the order of `clients`)."""

    def __init__(self, inner):
        if not is_active():
            raise RuntimeError("DistributedEngine needs an initialised process group with several ranks")
        self.inner = inner
        self.world_size = world_size()
        self.rank = rank()

    @property
    def num_parameters(self) -> int:
        return self.inner.num_parameters

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def train_clients(self, global_params: Tensor, clients: list[int], round: int, roles=None) -> Tensor:
        device = self.inner.device
        # Every rank trains from rank 0's global model, so ranks cannot drift apart even where
        # an aggregator's kernels are not bitwise deterministic.
        global_params = global_params.detach().to(device).contiguous()
        torch.distributed.broadcast(global_params, src=0)

        bounds = shares(len(clients), self.world_size)
        start, stop = bounds[self.rank]
        share_roles = None if roles is None else list(roles[start:stop])
        local = self.inner.train_clients(global_params, list(clients[start:stop]), round, share_roles)
        self._share_client_state(list(clients[start:stop]))
        widest = max(high - low for low, high in bounds)
        if widest == 0:
            return local
        padded = torch.zeros(widest, local.shape[1], dtype=local.dtype, device=device)
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, padded)
        return torch.cat([part[: high - low] for part, (low, high) in zip(gathered, bounds)])

    def _share_client_state(self, trained: list[int]) -> None:
        """Per-client state kept across rounds (`original` with `momentum_reset: never`) is left
        where a client trained; every rank receives every rank's, so whichever rank trains a
        client next continues from it and rank 0's checkpoint holds all of it."""
        training = getattr(self.inner, "training", None)
        if training is None or not training.rule.keeps_client_state:
            return
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, training.client_state(trained))
        for part in gathered:
            training.load_client_state(part)

    @property
    def needs_last_global_update(self) -> bool:
        return getattr(self.inner, "needs_last_global_update", False)

    def observe_global_update(self, update) -> None:
        # Every rank runs the round loop and observes the same update.
        if hasattr(self.inner, "observe_global_update"):
            self.inner.observe_global_update(update)

    def batchnorm_counters(self, clients: list[int], roles=None) -> Tensor:
        # A function of the settings, roles and data sizes only: every rank computes all rows.
        return self.inner.batchnorm_counters(clients, roles)

    def state_dict(self):
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else None

    def load_state_dict(self, state) -> None:
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(state)  # None included: it clears the per-client state
