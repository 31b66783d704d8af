"""What every aggregation rule shares: its result, the context of a round, and the base class.

A rule receives ``updates[n, d]``: one row per selected client, each row ``local - global`` over
the model's trainable floats. It returns an :class:`Aggregation` whose ``update`` the round loop
adds to the global parameters.

Rows holding NaN or Inf are set aside before any rule runs: they are listed in
``rejected_nonfinite`` and never enter a mean, a distance or a sort. The rule then sees the
remaining ``n`` rows. When every row is rejected the update is all zeros.

A rule declares what else it reads in ``needs`` (names of :class:`AggregationContext` fields);
the round loop fills in only those (``aggregation_context``), so nothing a rule does not ask for
is computed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from sim import rng
from sim.errors import ConfigError
from sim.lazy import torch
from sim.server.aggregate import check_counters, split_finite
from sim.settings import check_settings, settings_from
from sim.state import Component

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class Aggregation:
    update: Tensor  # [d]
    kept: list[int]  # row indices of the input that contributed, ascending
    rejected_nonfinite: list[int]  # row indices dropped for holding NaN or Inf
    # The kept rows in the order the rule took them (its mean adds them in this order, so a mean of
    # the same rows in this order has the same bits: `metrics.shadow_kept: run`); `kept` when not given.
    order: list[int] | None = None

    def __post_init__(self):
        if self.order is None:
            self.order = list(self.kept)


@dataclass
class AggregationContext:
    """What a rule may read besides the updates; only the fields in its ``needs`` are filled in.

    ``counters`` are one row per update (``[n, L]``); ``reference_update`` is ``[d]``, an update
    the server computes itself (on data of its own) in the same round."""

    round: int = 0
    clients: Sequence[int] = ()  # the selected client ids, one per row
    generator: torch.Generator | None = None  # CPU, seeded from (seed, round, rng.AGGREGATION)
    counters: Tensor | None = None  # [n, L] BatchNorm forward passes (sim.server.fltk)
    global_params: Tensor | None = None  # [d], the model the round started from
    last_global_update: Tensor | None = None  # [d], what the previous round added; None in round 0
    reference_update: Tensor | None = None  # [d]


CONTEXT_FIELDS = tuple(f.name for f in dataclasses.fields(AggregationContext))


@dataclass
class ServerSetup:
    """The shared settings a rule may be built from: ``server.f`` (None: from the malicious share)
    and the client counts of the ``clients`` section."""

    f: int | None
    clients_per_round: int
    num_clients: int
    num_malicious: int
    aggregator: str = ""  # the config name the rule was chosen by (for messages)


class Aggregator(Component):
    """Base rule: set aside non-finite rows, run ``_aggregate`` on the rest.

    ``settings`` is the dataclass of the rule's parameters (``sim.settings``; None: it has none);
    ``check`` holds the checks that need the shared settings (``server.f``, the client counts) and
    gives the constructor's arguments, so a config is checked without building the rule;
    ``from_config`` builds it. ``needs`` names the context fields the rule reads.
    """

    settings: ClassVar[type | None] = None
    needs: frozenset[str] = frozenset()

    @classmethod
    def check(cls, settings: Any, setup: ServerSetup) -> dict[str, Any]:
        """The constructor's keyword arguments for `settings` (an instance of `cls.settings`,
        checked against its declaration, or None), after the checks that need `setup`."""
        if settings is None:
            return {}
        return dataclasses.asdict(settings)

    @classmethod
    def from_config(cls, settings: Any, setup: ServerSetup) -> "Aggregator":
        """The rule for its checked `settings`: built from `check`'s arguments."""
        return cls(**cls.check(settings, setup))

    def __call__(self, updates: Tensor, context: AggregationContext | None = None) -> Aggregation:
        context = AggregationContext() if context is None else context
        finite_updates, finite_rows, rejected_rows = split_finite(updates)
        counters = context.counters
        if counters is not None:
            counters = check_counters(counters, updates.shape[0], type(self).__name__, "counters" in self.needs)
        if not finite_rows:
            return Aggregation(updates.new_zeros(updates.shape[1]), [], rejected_rows)
        if counters is not None:
            context = dataclasses.replace(context, counters=counters[finite_rows].to(finite_updates.device))
        if rejected_rows and len(context.clients) == updates.shape[0]:
            # the client ids of the rows the rule sees, one per row as before
            context = dataclasses.replace(context, clients=[context.clients[i] for i in finite_rows])
        update, kept_local = self._aggregate(finite_updates, context)
        order = [finite_rows[i] for i in kept_local]
        return Aggregation(update, sorted(order), rejected_rows, order)

    def _aggregate(self, updates: Tensor, context: AggregationContext) -> tuple[Tensor, list[int]]:
        raise NotImplementedError


def build_rule(rule: type[Aggregator], raw_settings: Any, setup: ServerSetup, prefix: str, *,
               build: bool = True) -> Aggregator | None:
    """`rule` from its settings (an instance, a mapping, or None for the defaults), each checked
    against its declaration and by the rule's `check`; with `build=False` only checked (None).
    A rule's own refusal (ValueError) is reported as a `ConfigError` naming the settings at
    `prefix` (e.g. `server.sparsefed.`)."""
    settings = settings_from(rule.settings, raw_settings)
    check_settings(settings, prefix)
    try:
        if not build:
            rule.check(settings, setup)
            return None
        return rule.from_config(settings, setup)
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.')}: {error}; fix: change the settings under {prefix.rstrip('.')}") from None


def aggregation_context(
    rule: Aggregator,
    *,
    round: int,
    clients: Sequence[int],
    seed: int,
    counters: Callable[[Sequence[int]], Tensor] | None = None,
    global_params: Tensor | None = None,
    last_global_update: Tensor | None = None,
    reference_update: Callable[[int, Tensor], Tensor] | None = None,
) -> AggregationContext:
    """The context of `rule` in round `round`, holding only what the rule `needs`.

    `counters(clients)` and `reference_update(round, global_params)` are called only when the
    rule asks for them; a rule that asks for something the run cannot provide is refused."""
    needs = rule.needs
    unknown = sorted(set(needs) - set(CONTEXT_FIELDS))
    if unknown:
        raise ValueError(f"{type(rule).__name__} needs {unknown}, which no context holds; allowed: {', '.join(CONTEXT_FIELDS)}")
    values: dict[str, Any] = {"round": int(round), "clients": list(clients)}
    if "generator" in needs:
        values["generator"] = rng.torch_stream(seed, round, rng.AGGREGATION)
    if "counters" in needs:
        if counters is None:
            raise ConfigError(f"{type(rule).__name__} needs BatchNorm counters, which this run does not count")
        values["counters"] = counters(clients)
    if "global_params" in needs:
        values["global_params"] = global_params
    if "last_global_update" in needs:
        values["last_global_update"] = last_global_update
    if "reference_update" in needs:
        if reference_update is None:
            raise ConfigError(
                f"{type(rule).__name__} needs a server reference update, which this run does not compute; "
                "fix: choose another server.aggregator"
            )
        values["reference_update"] = reference_update(round, global_params)
    return AggregationContext(**values)
