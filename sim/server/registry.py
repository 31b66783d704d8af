"""The aggregation rules by config name (`server.aggregator`), and building the configured one.

A rule is one file in this package holding its class, its settings declaration and its maths
(`sim.server.aggregate` holds what rules share); registering it is one line below. Its settings
are the config section `server.<name>` (e.g. `server.sparsefed.k`), read from its declaration.
"""

from __future__ import annotations

from typing import Any

from sim.errors import ConfigError
from sim.server.base import Aggregator, ServerSetup, build_rule
from sim.server.centered_clipping import CenteredClipping
from sim.server.coordinatewise import Median, TrimmedMean
from sim.server.fedavg import FedAvg
from sim.server.flame import Flame
from sim.server.fltrust import FLTrust
from sim.server.foolsgold import FoolsGold
from sim.server.fltk import FltkBulyan, FltkMultiKrum
from sim.server.krum import Bulyan, Krum, MultiKrum
from sim.server.norm_clipping import NormClipping
from sim.server.prodigy import Prodigy
from sim.server.rfa import RFA
from sim.server.rlr import RLR
from sim.server.robust_dpfl import RobustDPFL
from sim.server.sparsefed import SparseFed

AGGREGATORS: dict[str, type[Aggregator]] = {
    "fedavg": FedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "sparsefed": SparseFed,
    "fltk_multikrum": FltkMultiKrum,
    "fltk_bulyan": FltkBulyan,
    "robust_dpfl": RobustDPFL,
    "norm_clipping": NormClipping,
    "rlr": RLR,
    "rfa": RFA,
    "centered_clipping": CenteredClipping,
    "prodigy": Prodigy,
    "flame": Flame,
    "foolsgold": FoolsGold,
    "fltrust": FLTrust,
}


# Names a user may reach for that the simulator deliberately does not provide, with the reason.
UNAVAILABLE_AGGREGATORS: dict[str, str] = {}


def _read(server: Any, name: str, default: Any) -> Any:
    if isinstance(server, dict):
        return server.get(name, default)
    return getattr(server, name, default)


def build_aggregator(server: Any, clients_per_round: int, num_clients: int, num_malicious: int, *,
                     build: bool = True) -> Aggregator | None:
    """Build the rule named by ``server.aggregator`` (a mapping or an object with the fields
    of the ``server`` config section; the rule's own settings under ``server.<name>``), checking
    every setting against ``clients_per_round`` before any training starts; with ``build=False``
    the same checks through the rule's declaration and ``check``, and nothing built (None).

    ``server.f = null`` resolves to ``sim.server.krum.default_f``: the expected number of
    malicious clients among those selected, rounded up (3 for the default 10 of 100 with 25
    malicious).
    """
    for field, value, minimum in (
        ("clients.clients_per_round", clients_per_round, 1),
        ("clients.num_clients", num_clients, 1),
        ("clients.num_malicious", num_malicious, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{field}={value!r} is invalid: it must be an integer >= {minimum}")
    if num_malicious > num_clients:
        raise ConfigError(
            f"clients.num_malicious={num_malicious} exceeds clients.num_clients={num_clients}; "
            f"lower num_malicious to at most {num_clients}"
        )

    name = _read(server, "aggregator", "multikrum")
    if isinstance(name, str) and name in UNAVAILABLE_AGGREGATORS:
        raise ConfigError(UNAVAILABLE_AGGREGATORS[name])
    if name not in AGGREGATORS:
        raise ConfigError(
            f"server.aggregator={name!r} is not a known rule; allowed: {', '.join(AGGREGATORS)}"
        )
    setup = ServerSetup(_read(server, "f", None), clients_per_round, num_clients, num_malicious, name)
    return build_rule(AGGREGATORS[name], _read(server, name, None), setup, f"server.{name}.", build=build)


def check_aggregator(server: Any, clients_per_round: int, num_clients: int, num_malicious: int) -> None:
    """`build_aggregator`'s checks, through the rule's declaration and `check`: nothing is built."""
    build_aggregator(server, clients_per_round, num_clients, num_malicious, build=False)
