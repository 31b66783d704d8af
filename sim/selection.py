"""The malicious client set and the clients selected each round.

Both are pure functions of the seed (and the round): every call builds its own
``numpy.random.default_rng`` from ``[seed, ..., stream]`` and touches no global random state, so
runs that differ only in a defense or an aggregator see identical selections, and a resumed run
selects exactly what the uninterrupted run would have.

``rng="authors"`` draws both as the LeadFL authors' code does (docs/algorithms.md, "Where this
follows the authors' code"): numpy's legacy ``RandomState`` seeded 0 for the malicious set and
``r + 100`` in round ``r``, over the client ids 1..N (here 0..N-1). Those draws do not depend on
``seed``; they are still built per call, never from the global generator.

``override_rounds`` replaces the selection of the listed rounds by ``override_malicious``
malicious clients and benign ones for the rest, drawn from the round's stream after the
schedule's own draw, whatever the schedule (the authors' code does this in rounds 0, 10, 12).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from numbers import Integral
from typing import Any

from sim import rng
from sim.errors import ConfigError
from sim.lazy import np

__all__ = ["SCHEDULES", "SELECTION_RNGS", "Selector", "malicious_set"]

SCHEDULES = ("random", "periodic", "fixed", "schedule")
# Where the malicious set and the per-round draws come from: this simulator's seeded streams, or
# the LeadFL authors' legacy-numpy seeding.
SELECTION_RNGS = ("simulator", "authors")
AUTHORS_MALICIOUS_SEED = 0
AUTHORS_ROUND_SEED_OFFSET = 100


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)  # numpy's integers are Integral


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


def malicious_set(seed: int, num_clients: int, num_malicious: int, source: str = "simulator") -> list[int]:
    """The ``num_malicious`` malicious client ids out of ``0 .. num_clients-1``, sorted.

    ``source="authors"``: ``np.random.seed(0); np.random.choice(range(1, N + 1), M, replace=False)``
    as the LeadFL code draws it, minus one (``seed`` is not used).
    """
    _require_int("seed", seed, 0)
    _require_int("clients.num_clients", num_clients, 1)
    _require_int(
        "clients.num_malicious", num_malicious, 0, num_clients,
        fix=f"there are only {num_clients} clients",
    )
    if source == "authors":
        draws = np.random.RandomState(AUTHORS_MALICIOUS_SEED)
        return sorted(int(c) - 1 for c in draws.choice(range(1, num_clients + 1), num_malicious, replace=False))
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

    ``rng`` (``SELECTION_RNGS``) picks the random source (module docstring); under ``authors`` a
    schedule with malicious and benign draws takes the benign clients first, as that code does.
    ``override_rounds`` / ``override_malicious``: see the module docstring.

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
        rng: str = "simulator",
        override_rounds: Sequence[int] = (),
        override_malicious: int = 5,
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
        if rng not in SELECTION_RNGS:
            raise ConfigError(
                f"selection.rng={rng!r} is not a known source; allowed: {', '.join(SELECTION_RNGS)}; "
                "fix: --set selection.rng=simulator"
            )
        self.rng = rng
        self.override_rounds = tuple(override_rounds)
        self.override_malicious = override_malicious
        self._validate_schedule()

    # The malicious set is drawn when first read, so checking the settings (`sim.config.validate`)
    # draws nothing.
    @cached_property
    def malicious(self) -> list[int]:
        return malicious_set(self.seed, self.num_clients, self.num_malicious, self.rng)

    @cached_property
    def _malicious_ids(self) -> frozenset[int]:
        return frozenset(self.malicious)

    @cached_property
    def benign(self) -> list[int]:
        return [c for c in range(self.num_clients) if c not in self._malicious_ids]

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
            rng=read(selection, "rng", "simulator"),
            override_rounds=read(selection, "override_rounds", ()) or (),
            override_malicious=read(selection, "override_malicious", 5),
        )

    @property
    def _benign_count(self) -> int:
        return self.num_clients - self.num_malicious

    def _count_range(self) -> tuple[int, int]:
        # A round with c malicious clients also needs clients_per_round - c benign ones.
        low = max(0, self.clients_per_round - self._benign_count)
        high = min(self.clients_per_round, self.num_malicious)
        return low, high

    def _require_count(self, field: str, value: Any) -> int:
        low, high = self._count_range()
        return _require_int(
            field, value, low, high,
            fix=(
                f"with clients.clients_per_round={self.clients_per_round}, "
                f"clients.num_malicious={self.num_malicious} and {self._benign_count} benign clients, "
                f"a round can hold {low} to {high} malicious clients"
            ),
        )

    def _validate_schedule(self) -> None:
        for position, round in enumerate(self.override_rounds):
            _require_int(f"selection.override_rounds[{position}]", round, 0, fix="list round numbers, e.g. [0, 10, 12]")
        self.override_rounds = frozenset(int(round) for round in self.override_rounds)
        if self.override_rounds:
            self.override_malicious = self._require_count("selection.override_malicious", self.override_malicious)
        if self.schedule == "periodic":
            self.period = _require_int("selection.period", self.period, 1)
            self.burst_rounds = _require_int(
                "selection.burst_rounds", self.burst_rounds, 0, self.period,
                fix=f"a cycle has selection.period={self.period} rounds",
            )
            if self.burst_rounds > 0:
                self.burst_malicious = self._require_count("selection.burst_malicious", self.burst_malicious)
            if self.burst_rounds < self.period and self.clients_per_round > self._benign_count:
                raise ConfigError(
                    f"selection.schedule='periodic' with selection.burst_rounds={self.burst_rounds} < "
                    f"selection.period={self.period} has all-benign rounds needing "
                    f"clients.clients_per_round={self.clients_per_round} benign clients, but only "
                    f"{self._benign_count} exist; lower clients.num_malicious to at most "
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

    def _rng(self, round: int) -> np.random.Generator | np.random.RandomState:
        if not _is_int(round) or round < 0:
            raise ValueError(f"round must be an integer >= 0, got {round!r}")
        if self.rng == "authors":
            return np.random.RandomState(int(round) + AUTHORS_ROUND_SEED_OFFSET)
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
        else:
            chosen = self._draw_mix(draws, self.scheduled_malicious_count(round))
        if round in self.override_rounds:
            chosen = self._draw_mix(draws, self.override_malicious)
        return sorted(int(c) for c in chosen)

    def _draw_mix(self, draws, count: int) -> list[int]:
        """``count`` malicious and ``clients_per_round - count`` benign clients."""
        benign_count = self.clients_per_round - count
        if self.rng == "authors":
            # Benign first, then malicious, both drawn even when empty (a legacy draw of 0 still
            # advances the stream), as the authors' code does.
            benign = draws.choice(self.benign, size=benign_count, replace=False)
            return [*benign, *draws.choice(self.malicious, size=count, replace=False)]
        malicious = draws.choice(self.malicious, size=count, replace=False) if count else []
        benign = draws.choice(self.benign, size=benign_count, replace=False)
        return [*malicious, *benign]

    def malicious_count(self, round: int) -> int:
        """How many of ``select(round)`` are malicious."""
        return sum(c in self._malicious_ids for c in self.select(round))
