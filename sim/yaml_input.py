"""Reading YAML that a user or a results folder hands in: safe (no tags that build objects),
bounded (size and aliases capped before anything is built, so an alias bomb cannot exhaust
memory), and plain about numbers: only decimal integers and decimal floats are numbers. YAML 1.1
would read `0x10` as 16, `010` as 8, `1_0.5` as 10.5 and `1:30` as 90; those are refused with the
decimal spelling to use instead."""

from __future__ import annotations

import re

import yaml

from sim.errors import ConfigError

MAX_BYTES = 1 << 20  # 1 MiB: far above any grid or config, far below what would strain memory
MAX_ALIASES = 100  # `*name` references per document
MAX_DEPTH = 64  # nesting of mappings and lists: a config needs 4, a grid 5

_DECIMAL_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_DECIMAL_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"more than {MAX_ALIASES} alias references (*name) at line {mark.line + 1}; "
                                     "fix: write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"mappings and lists nested more than {MAX_DEPTH} deep at line {mark.line + 1}; "
                                     "fix: point at a settings file (a config needs 4 levels)")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        if not _DECIMAL_INT.match(text):
            raise yaml.YAMLError(f"{text!r} at line {node.start_mark.line + 1} is not a decimal whole number "
                                 f"(YAML 1.1 would read it as {yaml.SafeLoader.construct_yaml_int(self, node)}); "
                                 "fix: write it in decimal digits, or quote it to mean text")
        return int(text)

    def construct_yaml_float(self, node):
        text = self.construct_scalar(node)
        if not _DECIMAL_FLOAT.match(text):
            raise yaml.YAMLError(f"{text!r} at line {node.start_mark.line + 1} is not a decimal number (YAML 1.1 "
                                 f"would read it as {yaml.SafeLoader.construct_yaml_float(self, node)!r}); fix: write it "
                                 "in decimal digits (e.g. 10.5), or quote it to mean text")
        return yaml.SafeLoader.construct_yaml_float(self, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


def load(text: str | bytes, source: str) -> object:
    """The YAML document in `text` (from `source`, for messages); ConfigError where it is too
    large, not YAML, or spells a number in a way that is refused."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise ConfigError(f"{source} is {len(text)} bytes, more than the {MAX_BYTES} a settings file may hold; "
                              "fix: point at the right file")
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise ConfigError(f"{source} is not text (not UTF-8); fix: point at a YAML file") from None
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source} is {len(text)} characters, more than the {MAX_BYTES} a settings file may hold; "
                          "fix: point at the right file")
    if "\x00" in text:
        raise ConfigError(f"{source} is not text (it holds NUL bytes); fix: point at a YAML file")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except RecursionError:  # nesting deep enough to exhaust the parser's own recursion before MAX_DEPTH counts it
        raise ConfigError(f"{source} is not valid YAML: it nests too deeply; fix: point at a settings file") from None
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        fix = "" if "fix:" in reason else "; fix: correct the YAML (quote text that holds : # [ ] { } or a leading -)"
        raise ConfigError(f"{source} is not valid YAML: {reason}{fix}") from None


def read(path, source: str) -> object:
    """`load` of the file at `path`; ConfigError naming the path where it cannot be read."""
    from pathlib import Path

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {source} at {path}: {error.strerror}; fix: check the path") from None
    return load(data, f"{source} at {path}")
