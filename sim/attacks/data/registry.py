"""The data-poisoning attacks by config name (`attack.type`); `none` trains every client honestly.

Adding an attack is one file beside this one and one line here (docs/architecture.md)."""

from __future__ import annotations

from typing import Any, Sequence

from sim.attacks.data.backdoor import Backdoor
from sim.attacks.data.base import TRIGGER_RATE_METRIC, DataPoisoningAttack
from sim.attacks.data.dba import DBA
from sim.attacks.data.label_flip import LabelFlip
from sim.attacks.data.neurotoxin import Neurotoxin
from sim.errors import ConfigError
from sim.settings import check_settings, settings_from

NONE = "none"

DATA_POISONING: dict[str, type[DataPoisoningAttack] | None] = {
    NONE: None,
    "backdoor": Backdoor,
    "label_flip": LabelFlip,
    "dba": DBA,
    "neurotoxin": Neurotoxin,
}


def attack_class(kind: str) -> type[DataPoisoningAttack] | None:
    """The class of `attack.type` `kind` (None for `none`), or a `ConfigError` naming the choices."""
    if kind not in DATA_POISONING:
        raise ConfigError(f"attack.type = {kind!r} is not a known attack; allowed: {', '.join(DATA_POISONING)}; "
                          "fix: --set attack.type=backdoor")
    return DATA_POISONING[kind]


def attack_settings(attack: Any) -> Any:
    """The settings of the attack the `attack` section names, as its declaration's instance (None
    for an attack without settings); a section without the attack's subsection takes defaults."""
    cls = attack_class(attack.type)
    if cls is None or cls.settings is None:
        return None
    return settings_from(cls.settings, getattr(attack, cls.name, None))


def check_attack(attack: Any, num_classes: int) -> None:
    """Raises `ConfigError` for an `attack` section no malicious client can train with."""
    cls = attack_class(attack.type)
    if cls is not None:
        settings = attack_settings(attack)
        check_settings(settings, f"attack.{cls.name}.")
        cls.check(settings, attack, num_classes)


def build_attack(attack: Any, dataset, device, malicious: Sequence[int] = ()) -> DataPoisoningAttack | None:
    """The attack of the `attack` section for a run on `dataset` (None for `none`)."""
    cls = attack_class(attack.type)
    return None if cls is None else cls(attack_settings(attack), attack, dataset, device, malicious)


def metric_name(kind: str) -> str:
    """What the `backdoor_accuracy` score measures under `attack.type` `kind`: a backdoor's success
    only when the attack trains one (an unknown name, e.g. from an older folder, reads as not)."""
    cls = DATA_POISONING.get(kind)
    return TRIGGER_RATE_METRIC if cls is None else cls.metric_name()


def description(kind: str) -> str:
    """The attack in words, for captions."""
    if kind == NONE:
        return "no attack"
    cls = DATA_POISONING.get(kind)
    return cls.description if cls is not None and cls.description else kind


def training_cost(attack: Any) -> int:
    """Forward plus backward passes of one malicious local step (`DataPoisoningAttack.training_cost`)."""
    cls = attack_class(attack.type)
    return 3 if cls is None else cls.training_cost(attack_settings(attack))


def trigger_pieces(attack: Any) -> list[tuple]:
    """The parts of the trigger the run is also scored with, one by one (`trigger_pieces`)."""
    cls = attack_class(attack.type)
    return [] if cls is None else cls.trigger_pieces(attack_settings(attack))
