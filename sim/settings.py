"""How a setting is declared and checked: its kind, default, choices, range and help text.

A component (aggregator, model-poisoning attack, client defense, data-poisoning attack) declares
its parameters once, beside its code, as a dataclass whose fields are made by `setting`:

    @dataclass
    class TrimmedMeanSettings:
        beta: float = setting(0.1, "float", low=0, high=0.5, high_open=True,
                              help="share of values dropped from each end, per coordinate")

and names it in its class (`settings = TrimmedMeanSettings`). The configuration (`sim.config`)
walks these declarations the same way as its own sections: the YAML keys, `--set` paths,
closest-match suggestions, `list-presets --settings` and the docs all come from them, and
`check_value` is the one place a value is held against its declaration.

This module imports nothing heavy, so a command that only reads settings stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import field
from typing import Any, Sequence

from sim.errors import ConfigError

# Models, updates and their hyperparameters are float32 tensors: a larger setting becomes Inf there,
# and a nonzero one below float32's smallest normal number flushes to 0 or loses its precision.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38
# Whole-number settings are held in int64 tensors and C longs where they reach torch.
INT64_MAX = 2**63 - 1

KINDS = ("int", "float", "str", "bool", "int_list", "str_or_list")


def setting(
    default: Any,
    kind: str,
    *,
    choices: Sequence[str] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    nullable: bool = False,
    help: str = "",
) -> Any:
    """A dataclass field carrying what `check_value` checks: kind, choices and range.

    kind is one of "int", "float", "str", "bool", "int_list", "str_or_list" (text or a list of
    texts); a range applies to numbers and, for "int_list", to every element.
    """
    if kind not in KINDS:
        raise ValueError(f"setting kind {kind!r} is not one of {', '.join(KINDS)}")
    metadata = {
        "kind": kind,
        "choices": tuple(choices) if choices else None,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "nullable": nullable,
        "help": help,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def is_setting(dc_field: dataclasses.Field) -> bool:
    """A leaf declared by `setting` (anything else in a settings tree is a section)."""
    return "kind" in dc_field.metadata


def declared(settings_class: type | None) -> list[dataclasses.Field]:
    """The settings a component declares (none for `None`)."""
    return [] if settings_class is None else list(dataclasses.fields(settings_class))


def settings_from(settings_class: type | None, raw: Any) -> Any:
    """An instance of `settings_class` from `raw`: an instance already, a mapping of some of its
    fields, an object with those attributes, or None (every default)."""
    if settings_class is None:
        return None
    if isinstance(raw, settings_class):
        return raw
    names = [f.name for f in dataclasses.fields(settings_class)]
    if raw is None:
        return settings_class()
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ConfigError(
                f"{settings_class.__name__} has no setting {unknown[0]!r}; allowed: {', '.join(names)}; "
                "fix: remove it or use one of those names"
            )
        return settings_class(**raw)
    return settings_class(**{name: getattr(raw, name) for name in names if hasattr(raw, name)})


def check_settings(settings: Any, prefix: str) -> None:
    """`check_value` on every declared field of the settings instance `settings` (paths `prefix` +
    name, e.g. `server.trimmed_mean.`)."""
    if settings is None:
        return
    defaults = type(settings)()
    for f in dataclasses.fields(settings):
        check_value(prefix + f.name, getattr(settings, f.name), f.metadata, getattr(defaults, f.name))


def help_lines(settings_class: type | None, prefix: str) -> list[str]:
    """One line per declared setting: `path = default  (kind, range or choices) help`."""
    lines = []
    for f in declared(settings_class):
        meta = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        constraint = meta["kind"].replace("_", " ")
        if meta["choices"]:
            constraint += ": " + " | ".join(meta["choices"])
        elif meta["low"] is not None or meta["high"] is not None:
            constraint += " " + describe_range(meta)
        if meta["nullable"]:
            constraint += " or null"
        text = f"{prefix}{f.name} = {show(default)}  ({constraint})"
        lines.append(text + (f"  {meta['help']}" if meta["help"] else ""))
    return lines


# ----------------------------------------------------------------------------------------------
# one value against its declaration


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def describe_range(meta: dict) -> str:
    low, high = meta["low"], meta["high"]
    if low is not None and high is not None:
        left = "(" if meta["low_open"] else "["
        right = ")" if meta["high_open"] else "]"
        return f"in {left}{_number(low)}, {_number(high)}{right}"
    if low is not None:
        return f"{'>' if meta['low_open'] else '>='} {_number(low)}"
    return f"{'<' if meta['high_open'] else '<='} {_number(high)}"


def in_range(value: float, meta: dict) -> bool:
    low, high = meta["low"], meta["high"]
    if low is not None and (value <= low if meta["low_open"] else value < low):
        return False
    if high is not None and (value >= high if meta["high_open"] else value > high):
        return False
    return True


def show(value: Any) -> str:
    """A value as it would be typed after `--set path=`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def check_value(path: str, value: Any, meta: dict, default: Any) -> None:
    """Raises `ConfigError` (naming `path`, the value, what is allowed and a fix) unless `value`
    fits the declaration `meta` (a field's metadata from `setting`)."""
    kind = meta["kind"]
    fix_default = f"fix: --set {path}={show(default)}"
    if value is None:
        if meta["nullable"]:
            return
        raise ConfigError(f"{path}=null is not allowed; it needs a {kind.replace('_', ' ')} value; {fix_default}")
    if kind == "int" and not is_int(value):
        raise ConfigError(f"{path}={value!r} must be a whole number; {fix_default}")
    if kind == "int" and abs(value) > INT64_MAX and meta["high"] is None:
        raise ConfigError(f"{path}={value!r} is beyond the largest whole number the simulator holds (2**63 - 1); "
                          f"{fix_default}")
    if kind == "float" and not is_number(value):
        raise ConfigError(f"{path}={value!r} must be a finite number; {fix_default}")
    if kind == "float" and abs(value) > FLOAT32_MAX:
        raise ConfigError(
            f"{path}={value!r} is beyond float32's largest value ({FLOAT32_MAX:.4g}), the precision the simulator "
            f"computes in; {fix_default}"
        )
    if kind == "float" and 0 < abs(value) < FLOAT32_TINY:
        raise ConfigError(
            f"{path}={value!r} is below float32's smallest normal number ({FLOAT32_TINY:.4g}), so it vanishes (or "
            f"loses its precision) in the float32 arithmetic that uses it; {fix_default}"
        )
    if kind == "str" and not isinstance(value, str):
        raise ConfigError(f"{path}={value!r} must be text; {fix_default}")
    if kind == "str_or_list":
        if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            return
        raise ConfigError(f"{path}={value!r} must be text or a non-empty list of texts; {fix_default}")
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{path}={value!r} must be true or false; {fix_default}")
    if kind == "int_list":
        if not isinstance(value, list) or not all(is_int(v) for v in value):
            raise ConfigError(f"{path}={value!r} must be a list of whole numbers; fix: --set {path}=[3,0,0]")
        bad = [v for v in value if not in_range(v, meta)]
        if bad:
            raise ConfigError(
                f"{path} holds {bad[0]!r}, but every entry must be {describe_range(meta)}; fix: --set {path}=[3,0,0]"
            )
        return
    choices = meta["choices"]
    if choices and value not in choices:
        # The closest choice when one is close, else the default (not whichever is least unlike).
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        suggestion = close[0] if close else (default if default in choices else choices[0])
        raise ConfigError(
            f"{path}={value!r} is not one of {', '.join(choices)}; fix: --set {path}={suggestion}"
        )
    if kind in ("int", "float") and (meta["low"] is not None or meta["high"] is not None):
        if not in_range(value, meta):
            suggestion = default if default is not None and in_range(default, meta) else meta["low"]
            raise ConfigError(
                f"{path}={value!r} is out of range: it must be {describe_range(meta)}; "
                f"fix: --set {path}={show(suggestion)}"
            )
