"""The engine interface, the registry of engines, and what `engine: auto` picks.

The round loop only sees `Engine`, so engines that train clients differently (one after another,
stacked, split over ranks) are interchangeable; they all run `ClientTraining` and differ only in
how they get gradients and where the clients run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

from sim.engines import distributed
from sim.engines.batched import BatchedEngine
from sim.engines.sequential import SequentialEngine
from sim.errors import ConfigError
from sim.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor


class Engine(Protocol):
    num_parameters: int
    device: torch.device

    def train_clients(self, global_params: Tensor, clients: list[int], round: int,
                      roles: Sequence[str] | None = None) -> Tensor:
        """[len(clients), d] updates (local - global over the trainable parameters), one row
        per client in the order of `clients`; `roles` overrides each client's role ("benign" or
        the attack) without touching any state of the run."""
        ...

    def batchnorm_counters(self, clients: list[int], roles: Sequence[str] | None = None) -> Tensor:
        """[len(clients), L] float64: the forward passes each client's round adds to each of
        the model's L BatchNorm layers (the LeadFL code's `num_batches_tracked`)."""
        ...


# engine name (the `engine` setting) -> class; every one is built from the same arguments, and
# `client_chunk` only where the class takes it.
ENGINES: dict[str, type] = {"sequential": SequentialEngine, "batched": BatchedEngine}
AUTO = "auto"


def choose_engine(device) -> tuple[str, str]:
    """What `engine: auto` runs on `device`, and why (one line for the log).

    A rule, not a measurement, so the choice (and with it the float rounding of a run) does not
    depend on the load of the machine at start-up. `bench/sim_throughput.py` is its evidence:
    on a CPU a local step is compute-bound and vmap turns each convolution into a grouped one,
    which the CPU kernels run slower than the plain loop's; on a GPU one client's step leaves
    the device mostly idle, and stacking clients fills it.
    """
    kind = str(device).split(":")[0]  # `device` as the config spells it (cpu, cuda, cuda:N) or a torch.device
    if kind == "cuda":
        return "batched", "on a GPU, stacked clients fill the device where one client at a time leaves it idle"
    return "sequential", f"on {kind}, a plain loop per client outruns vmapped steps; see bench/results/sim_throughput_cpu.md"


def resolve_engine(cfg) -> tuple[str, str]:
    """(engine name, why) for `cfg.engine`, with `auto` resolved for `cfg.device`."""
    if cfg.engine == AUTO:
        return choose_engine(cfg.device)
    return cfg.engine, "set by the engine setting"


def build_engine(cfg, dataset, partitions, malicious: list[int]):
    """The client-training engine named by `cfg.engine`. Under torchrun with several ranks it
    is wrapped to share each round over the ranks."""
    name, _ = resolve_engine(cfg)
    engine_class = ENGINES.get(name)
    if engine_class is None:
        raise ConfigError(f"engine={cfg.engine!r} is not one of {', '.join([*ENGINES, AUTO])}; fix: --set engine=auto")
    options = {"client_chunk": cfg.client_chunk} if engine_class is BatchedEngine else {}
    engine = engine_class(cfg.model, dataset, partitions, malicious, cfg.training, cfg.attack, cfg.client_defense,
                          seed=cfg.seed, device=cfg.device, rounds=cfg.rounds, **options)
    return distributed.DistributedEngine(engine) if distributed.is_active() else engine


def describe_engine(cfg) -> str:
    """What trains the clients, e.g. `sequential` or `batched on each of 4 ranks`."""
    name, _ = resolve_engine(cfg)
    return f"{name} on each of {distributed.world_size()} ranks" if distributed.is_active() else name
