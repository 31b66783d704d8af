"""The malicious client set and the clients selected each round.

Both are pure functions of the seed (and the round): every call builds its own
``numpy.random.default_rng`` from ``[seed, ..., stream]`` and touches no global random state, so
runs that differ only in a defense or an aggregator see identical selections, and a resumed run
selects exactly what the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sim import rng
from sim.errors import ConfigError

__all__ = ["SCHEDULES", "Selector", "malicious_set"]

SCHEDULES = ("random", "periodic", "fixed", "schedule")



def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _require_int(field: str, value: Any, low: int, high: int | None = None, fix: str = "") -> int:
    if not _is_int(value) or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        message = f"{field}={value!r} is invalid: it must be {allowed}"
        if fix:
            message += f"; {fix}"
        if "[" not in field and _is_int(value):
            nearest = max(low, value) if high is None else min(max(low, value), high)
            message += f"; fix: --set {field}={nearest}"
        raise ConfigError(message)
    return int(value)


def malicious_set(seed: int, num_clients: int, num_malicious: int) -> list[int]:
    """The ``num_malicious`` malicious client ids out of ``0 .. num_clients-1``, sorted."""
    _require_int("seed", seed, 0)
    _require_int("clients.num_clients", num_clients, 1)
    _require_int(
        "clients.num_malicious", num_malicious, 0, num_clients,
        fix=f"there are only {num_clients} clients",
    )
    draws = rng.numpy_stream(seed, rng.MALICIOUS_SET)
    return sorted(int(c) for c in draws.choice(num_clients, size=num_malicious, replace=False))


class Selector:
    """Per-round client selection under one of the ``SCHEDULES``.

    * ``random``: ``clients_per_round`` clients uniformly without replacement; the malicious count
      is whatever the draw gives.
    * ``periodic``: cycles of ``period`` rounds; the first ``burst_rounds`` of each cycle select
      ``burst_malicious`` malicious clients and fill up with benign ones; the other rounds are all
      benign.
    * ``fixed``: ``fixed_malicious`` malicious clients every round.
    * ``schedule``: round ``r`` selects ``malicious_counts[r % len(malicious_counts)]`` malicious
      clients.

    ``select(round)`` returns sorted client ids; the same ``(seed, round)`` always gives the same list.
    """

    def __init__(
        self,
        num_clients: int,
        num_malicious: int,
        clients_per_round: int,
        schedule: str = "random",
        seed: int = 0,
        period: int = 10,
        burst_rounds: int = 2,
        burst_malicious: int = 6,
        fixed_malicious: int = 2,
        malicious_counts: Sequence[int] = (),
    ):
        self.num_clients = _require_int("clients.num_clients", num_clients, 1)
        self.num_malicious = _require_int(
            "clients.num_malicious", num_malicious, 0, num_clients,
            fix=f"lower it to at most clients.num_clients={num_clients}",
        )
        self.clients_per_round = _require_int(
            "clients.clients_per_round", clients_per_round, 1, num_clients,
            fix=f"lower it to at most clients.num_clients={num_clients}",
        )
        if schedule not in SCHEDULES:
            raise ConfigError(
                f"selection.schedule={schedule!r} is not a known schedule; allowed: {', '.join(SCHEDULES)}"
            )
        self.schedule = schedule
        self.seed = _require_int("seed", seed, 0)
        self.period = period
        self.burst_rounds = burst_rounds
        self.burst_malicious = burst_malicious
        self.fixed_malicious = fixed_malicious
        self.malicious_counts = tuple(malicious_counts)

        self.malicious = malicious_set(seed, num_clients, num_malicious)
        self._malicious_ids = frozenset(self.malicious)
        self.benign = [c for c in range(num_clients) if c not in self._malicious_ids]
        self._validate_schedule()

    @classmethod
    def from_config(cls, config: Any) -> Selector:
        """Build from a config object or mapping with ``seed``, ``clients`` and ``selection``."""

        def read(node: Any, name: str, default: Any = None) -> Any:
            if isinstance(node, Mapping):
                return node.get(name, default)
            return getattr(node, name, default)

        clients = read(config, "clients")
        selection = read(config, "selection")
        return cls(
            num_clients=read(clients, "num_clients"),
            num_malicious=read(clients, "num_malicious"),
            clients_per_round=read(clients, "clients_per_round"),
            schedule=read(selection, "schedule", "random"),
            seed=read(config, "seed", 0),
            period=read(selection, "period", 10),
            burst_rounds=read(selection, "burst_rounds", 2),
            burst_malicious=read(selection, "burst_malicious", 6),
            fixed_malicious=read(selection, "fixed_malicious", 2),
            malicious_counts=read(selection, "malicious_counts", ()) or (),
        )

    def _count_range(self) -> tuple[int, int]:
        # A round with c malicious clients also needs clients_per_round - c benign ones.
        low = max(0, self.clients_per_round - len(self.benign))
        high = min(self.clients_per_round, self.num_malicious)
        return low, high

    def _require_count(self, field: str, value: Any) -> int:
        low, high = self._count_range()
        return _require_int(
            field, value, low, high,
            fix=(
                f"with clients.clients_per_round={self.clients_per_round}, "
                f"clients.num_malicious={self.num_malicious} and {len(self.benign)} benign clients, "
                f"a round can hold {low} to {high} malicious clients"
            ),
        )

    def _validate_schedule(self) -> None:
        if self.schedule == "periodic":
            self.period = _require_int("selection.period", self.period, 1)
            self.burst_rounds = _require_int(
                "selection.burst_rounds", self.burst_rounds, 0, self.period,
                fix=f"a cycle has selection.period={self.period} rounds",
            )
            if self.burst_rounds > 0:
                self.burst_malicious = self._require_count("selection.burst_malicious", self.burst_malicious)
            if self.burst_rounds < self.period and self.clients_per_round > len(self.benign):
                raise ConfigError(
                    f"selection.schedule='periodic' with selection.burst_rounds={self.burst_rounds} < "
                    f"selection.period={self.period} has all-benign rounds needing "
                    f"clients.clients_per_round={self.clients_per_round} benign clients, but only "
                    f"{len(self.benign)} exist; lower clients.num_malicious to at most "
                    f"{self.num_clients - self.clients_per_round} or clients.clients_per_round"
                )
        elif self.schedule == "fixed":
            self.fixed_malicious = self._require_count("selection.fixed_malicious", self.fixed_malicious)
        elif self.schedule == "schedule":
            if not self.malicious_counts:
                raise ConfigError(
                    "selection.malicious_counts=[] is invalid for selection.schedule='schedule': give "
                    "one malicious count per round (repeated cyclically), e.g. [0, 0, 5]"
                )
            for position, count in enumerate(self.malicious_counts):
                self._require_count(f"selection.malicious_counts[{position}]", count)
            self.malicious_counts = tuple(int(c) for c in self.malicious_counts)

    def _rng(self, round: int) -> np.random.Generator:
        if not _is_int(round) or round < 0:
            raise ValueError(f"round must be an integer >= 0, got {round!r}")
        return rng.numpy_stream(self.seed, int(round), rng.SELECTION_ROUND)

    def scheduled_malicious_count(self, round: int) -> int | None:
        """The count the schedule prescribes for ``round``; None for ``random``."""
        if self.schedule == "random":
            return None
        if self.schedule == "periodic":
            return self.burst_malicious if round % self.period < self.burst_rounds else 0
        if self.schedule == "fixed":
            return self.fixed_malicious
        return self.malicious_counts[round % len(self.malicious_counts)]

    def select(self, round: int) -> list[int]:
        """Sorted client ids selected in ``round``."""
        draws = self._rng(round)
        if self.schedule == "random":
            chosen = draws.choice(self.num_clients, size=self.clients_per_round, replace=False)
            return sorted(int(c) for c in chosen)
        count = self.scheduled_malicious_count(round)
        malicious = draws.choice(self.malicious, size=count, replace=False) if count else []
        benign = draws.choice(self.benign, size=self.clients_per_round - count, replace=False)
        return sorted(int(c) for c in (*malicious, *benign))

    def malicious_count(self, round: int) -> int:
        """How many of ``select(round)`` are malicious."""
        return sum(c in self._malicious_ids for c in self.select(round))
