#!/usr/bin/env python3
"""Fuzz the `leadfl-sim` command line of one source tree, and count clean and other outcomes.

    python scripts/fuzz_cli.py --source DIR [--seed 0] [--cases N] [--only REGEX] [--out FILE.json]

It builds a deterministic list of cases (the same for every tree, given --seed) over five surfaces:

  set          `--set PATH=VALUE` for about 30 settings crossed with hostile values
  yaml         hostile YAML files given to `run --config`, `compare --config` and `sweep --grid`
  folder       finished run / comparison / sweep folders, copied per case and damaged, then given to
               `run --resume`, `compare --resume`, `plot`, `sweep --report` and `sweep --resume`
  paths        `--out` naming a file, a 300-character name, a path under a file; bad `--seeds`;
               grids of 10**7 and 10**12 trials
  concurrency  two `python -m sim` processes writing one folder at once

The cases run in batches, one subprocess per batch with `PYTHONPATH=DIR`, `OMP_NUM_THREADS=1`, its
cwd a temporary folder and its address space capped (`--memory-gib`, so that a blow-up ends in a
MemoryError rather than in the machine's OOM killer). Inside the subprocess each case is one call of
`sim.cli.main(argv)` with stdout and stderr captured and a time limit (`signal.alarm`); after a
timeout or a MemoryError the batch continues in a fresh subprocess. Each case runs in its own empty
folder.

Outcome of a case:
  clean   exit 0; or exit 1 or 2 whose stderr's last non-empty line starts with `error: ` (and, for
          exit 2, contains `fix`), with no Traceback anywhere in the output
  other   an exception escaping main (its type is recorded), a Traceback in the output, an error
          of several lines or without `error: `, another exit code, a timeout, a MemoryError, or a
          subprocess that died
and, independently, `unsafe` where a case expected to be refused was accepted:
  expect=refuse            exit 0 (a subnormal, non-decimal or huge value accepted; a hostile file
                           read; a reader that accepted a damaged file it reads; an out path that is
                           a file)
  expect=refuse_or_repair  exit 0 while a damaged file is still in its damaged state afterwards
                           (the damaged folder was taken as finished instead of being refused or rerun)
  expect=refuse_or_skip    (sweep --report) exit 0 with the damaged trial listed in results.csv
  any case                 a file outside the case's folder changed (a victim folder next to it is
                           hashed before and after); an edited figure (77.65...) or the victim's figure
                           (66.12...) printed or written into the folder's reports; a file created by a
                           YAML `!!python/object/apply:os.system` tag; both concurrent writers exit 0
Writes every case (category, argv, exit code, class, first line of error ...) to --out and prints,
per category, the counts of cases, clean, other and unsafe.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

SCRIPT = Path(__file__).resolve()
CATEGORIES = ("set", "yaml", "folder", "paths", "concurrency")

# The smallest run that trains: ~0.05 s a round in-process.
TINY = [
    "--set", "data.dataset=synthetic", "--set", "data.synthetic_train_size=300",
    "--set", "data.synthetic_test_size=100", "--set", "model=mlp", "--set", "clients.num_clients=6",
    "--set", "clients.num_malicious=2", "--set", "clients.clients_per_round=3",
    "--set", "selection.schedule=fixed", "--set", "selection.fixed_malicious=1",
    "--set", "training.local_steps=2", "--set", "eval.batch_size=50", "--set", "rounds=1",
    "--set", "server.aggregator=median",
]
TINY_TOKEN = "<tiny>"
TINY_YAML = (
    "data: {dataset: synthetic, synthetic_train_size: 300, synthetic_test_size: 100}\n"
    "model: mlp\n"
    "clients: {num_clients: 6, num_malicious: 2, clients_per_round: 3}\n"
    "selection: {schedule: fixed, fixed_malicious: 1}\n"
    "training: {local_steps: 2}\n"
    "eval: {batch_size: 50}\n"
    "rounds: 1\n"
    "server: {aggregator: median}\n"
)
COMPARE_YAML = "compare:\n  a: {}\n  b: {server.aggregator: trimmed_mean}\n"
ONE_VARIANT_YAML = "compare:\n  a: {}\n"
GRID_YAML = "settings:\n" + "".join("  " + line + "\n" for line in TINY_YAML.splitlines()) + "axes:\n  seed: [0, 1]\n"

# Figures written into damaged files, and into the victim folder's files: seen in a report or on
# stdout, they show a damaged (or outside) file read as finished. The forms are the ones the
# simulator prints (2 decimals on the terminal, 1 in tables).
MARK = 77.654321
VICTIM_MARK = 66.123456
MARK_PATTERN = re.compile(r"77\.654|77\.65(?!\d)|77\.7(?!\d)|66\.123|66\.12(?!\d)|66\.1(?!\d)")

# ----------------------------------------------------------------------------------------------
# 1. --set values

# Setting paths present in both trees; a tuple lists the spellings of one setting (newer first),
# and the worker uses the one its tree has. The settings after the path switch the component on
# that reads it.
SET_PATHS: list[tuple[tuple[str, ...], list[str]]] = [
    (("seed",), []),
    (("rounds",), []),
    (("training.lr",), []),
    (("training.momentum",), []),
    (("training.batch_size",), []),
    (("training.local_steps",), []),
    (("training.lr_gamma",), ["training.lr_schedule=step", "training.lr_step_rounds=1"]),
    (("training.lr_min",), ["training.lr_schedule=cosine"]),
    (("clients.num_clients",), []),
    (("clients.num_malicious",), []),
    (("clients.clients_per_round",), []),
    (("selection.fixed_malicious",), []),
    (("client_defense.alpha",), ["client_defense.type=leadfl"]),
    (("client_defense.q",), ["client_defense.type=leadfl"]),
    (("client_defense.noise_scale",), ["client_defense.type=ldp"]),
    (("privacy.clip",), ["privacy.type=gaussian"]),
    (("privacy.epsilon",), ["privacy.type=gaussian"]),
    (("privacy.delta",), ["privacy.type=gaussian"]),
    (("privacy.rdp_order",), ["privacy.type=gaussian"]),
    (("attack.boost",), []),
    (("attack.target_label",), []),
    (("attack.backdoor.blend_weight",), ["attack.backdoor.blend=fixed"]),
    (("eval.batch_size",), []),
    (("eval.test_size",), []),
    (("data.synthetic_train_size",), []),
    (("data.synthetic_test_size",), []),
    (("data.dirichlet_beta",), ["data.partition=dirichlet"]),
    (("server.f",), ["server.aggregator=multikrum"]),
    (("server.sparsefed.clip", "server.sparsefed_clip"), ["server.aggregator=sparsefed"]),
    (("server.trimmed_mean.beta", "server.trim_beta"), ["server.aggregator=trimmed_mean"]),
    (("model_poisoning.lie.z", "model_poisoning.lie_z"), ["model_poisoning.type=lie"]),
]
DIGITS30 = "123456789012345678901234567890"
# Whole-number settings among SET_PATHS (the others are floats); checked against the tree's own
# declarations by the worker.
INT_PATHS = {"seed", "rounds", "training.batch_size", "training.local_steps", "clients.num_clients",
             "clients.num_malicious", "clients.clients_per_round", "selection.fixed_malicious", "attack.target_label",
             "eval.batch_size", "eval.test_size", "data.synthetic_train_size", "data.synthetic_test_size", "server.f"}
# Values every setting gets, each expected to be refused: subnormal, non-decimal, beyond float32 or
# not finite; and a 30-digit integer, beyond int64 for a whole-number setting (for a float one it
# is 1.2e29, within float32, so no expectation).
REFUSED_VALUES = ["1e-320", "5e-324", "1e308", "1e39", "nan", ".inf", "0x10", "010", "1_0.5", "1:30", DIGITS30]
# Values of which --set-extra are drawn per setting (seeded), with no expectation.
OTHER_VALUES = ["", "null", "-1", "0", "[", "{a: 1}", "true", "abc", "1000000000000", "-0.0", "[1,2]", "-" + DIGITS30]


def set_cases(rng: random.Random, extra: int) -> list[dict]:
    cases = []
    for spellings, context in SET_PATHS:
        is_int = spellings[0] in INT_PATHS
        values = [(v, "refuse" if v != DIGITS30 or is_int else None) for v in REFUSED_VALUES]
        values += [(v, None) for v in rng.sample(OTHER_VALUES, extra)]
        for value, expect in values:
            argv = ["run", *TINY]
            for item in context:
                argv += ["--set", item]
            argv += ["--set", "{path}=" + value, "--out", "out", "--no-progress"]
            cases.append({"category": "set", "sub": f"{spellings[0]}={value!r}", "argv": argv,
                          "path": list(spellings), "setting_kind": "int" if is_int else "float", "expect": expect})
    return cases


# ----------------------------------------------------------------------------------------------
# 2. YAML files


def _bomb_list(depth: int = 20, width: int = 9) -> str:
    """A flow list holding anchors &a0..&a{depth-1}, each level `width` aliases of the one before:
    `width**depth` leaves once expanded (the billion-laughs shape), a few KiB as text."""
    levels = ["&a0 [" + ", ".join(["x"] * width) + "]"]
    for level in range(1, depth):
        levels.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "[" + ", ".join(levels) + "]"


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def yaml_contents() -> dict[str, tuple[str, str | None]]:
    """name -> (settings-file text or a generator tag, expectation) for --config files."""
    bomb = _bomb_list()
    return {
        "alias_bomb_unknown_key": ("bomb: " + bomb + "\n", "refuse"),
        "alias_bomb_description": ("description: " + bomb + "\n", "refuse"),
        "alias_bomb_setting": ("selection: {malicious_counts: " + bomb + "}\n", "refuse"),
        "alias_bomb_compare": ("compare: {a: {selection.malicious_counts: " + bomb + "}}\n", "refuse"),
        "binary_random": ("<binary>", "refuse"),
        "binary_not_utf8": ("<latin1>", "refuse"),
        "size_2mib_comment_padded": ("<2mib-comment>", "refuse"),
        "size_2mib_list": ("<2mib-list>", "refuse"),
        "python_tag_value": ("rounds: !!python/object/apply:os.system ['touch PWNED']\n", "refuse"),
        "python_tag_document": ("!!python/object/apply:os.system ['touch PWNED']\n", "refuse"),
        "python_name_tag": ("rounds: !!python/name:os.system\n", "refuse"),
        "non_mapping_list": ("- 1\n- 2\n", "refuse"),
        "non_mapping_scalar": ("42\n", "refuse"),
        "non_mapping_text": ("hello\n", "refuse"),
        "unknown_top_key": ("foo: 1\n", "refuse"),
        "unknown_nested_key": ("training: {lrr: 0.1}\n", "refuse"),
        "nondecimal_hex": ("rounds: 0x1\n", "refuse"),
        "nondecimal_octal": ("rounds: 01\n", "refuse"),
        "nondecimal_sexagesimal": ("rounds: 1:30\n", "refuse"),
        "nondecimal_underscore": ("training: {lr: 0.0_1}\n", "refuse"),
        "subnormal_lr": ("training: {lr: 1.0e-320}\n", "refuse"),
        "huge_lr": ("training: {lr: 1.0e+39}\n", "refuse"),
        "deep_nesting_10000": (_deep(10000) + "\n", "refuse"),
        "deep_mapping_2000": ("a: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n", "refuse"),
        "empty_file": ("", None),
    }


def grid_contents() -> dict[str, tuple[str, str | None]]:
    """name -> (grid-file text or a generator tag, expectation) for sweep --grid."""
    bomb = _bomb_list()
    settings = "settings:\n" + "".join("  " + line + "\n" for line in TINY_YAML.splitlines())
    return {
        "alias_bomb_axes": (settings + "axes: {seed: " + bomb + "}\n", "refuse"),
        "alias_bomb_description": ("description: " + bomb + "\n" + settings + "axes: {seed: [0]}\n", "refuse"),
        "alias_bomb_settings": ("settings: {selection.malicious_counts: " + bomb + "}\naxes: {seed: [0]}\n", "refuse"),
        "binary_random": ("<binary>", "refuse"),
        "size_2mib_comment_padded": ("<2mib-grid>", "refuse"),
        "python_tag_value": (settings + "axes: {seed: !!python/object/apply:os.system ['touch PWNED']}\n", "refuse"),
        "non_mapping_list": ("- 1\n- 2\n", "refuse"),
        "unknown_top_key": (settings + "axess: {seed: [0]}\n", "refuse"),
        "unknown_setting_in_axis": (settings + "axes: {training.lrr: [0.1]}\n", "refuse"),
        "nondecimal_axis_value": (settings + "axes: {seed: [0x1, 2]}\n", "refuse"),
        "subnormal_axis_value": (settings + "axes: {training.lr: [1.0e-320]}\n", "refuse"),
        "deep_nesting_10000": (_deep(10000) + "\n", "refuse"),
    }


# The files also given to `compare --config` (the loader is the one of `run --config`), and the grids
# also swept for real with --out (where an accepted grid starts trials).
COMPARE_FILES = ("alias_bomb_compare", "binary_random", "python_tag_value", "non_mapping_list", "nondecimal_hex")
GRID_OUT_FILES = ("nondecimal_axis_value", "subnormal_axis_value", "size_2mib_comment_padded")


def yaml_cases() -> list[dict]:
    cases = []
    for name, (_, expect) in yaml_contents().items():
        cases.append({"category": "yaml", "sub": f"run --config {name}", "file": ["cfg.yaml", "config", name],
                      "argv": ["run", "--config", "cfg.yaml", *TINY, "--out", "out", "--no-progress"], "expect": expect})
        if name in COMPARE_FILES:
            cases.append({"category": "yaml", "sub": f"compare --config {name}", "file": ["cfg.yaml", "config", name],
                          "argv": ["compare", "--config", "cfg.yaml", *TINY, "--out", "out", "--no-progress",
                                   "--jobs", "1"], "expect": expect})
    for name, (_, expect) in grid_contents().items():
        cases.append({"category": "yaml", "sub": f"sweep --grid {name} --dry-run", "file": ["grid.yaml", "grid", name],
                      "argv": ["sweep", "--grid", "grid.yaml", "--dry-run"], "expect": expect})
        if name in GRID_OUT_FILES:
            cases.append({"category": "yaml", "sub": f"sweep --grid {name} --out", "file": ["grid.yaml", "grid", name],
                          "argv": ["sweep", "--grid", "grid.yaml", "--out", "sw", "--jobs", "1"], "expect": expect})
    return cases


def make_yaml_file(kind: str, name: str, seed: int) -> bytes:
    text, _ = (yaml_contents() if kind == "config" else grid_contents())[name]
    rng = random.Random(f"{seed}-{kind}-{name}")
    if text == "<binary>":
        return bytes(rng.randrange(256) for _ in range(4096))
    if text == "<latin1>":
        return "rounds: 1\ndescription: caf\xe9 \xff\xfe\n".encode("latin-1")
    if text == "<2mib-comment>":
        return (TINY_YAML + ("# " + "x" * 1021 + "\n") * 2048).encode()
    if text == "<2mib-grid>":
        return (GRID_YAML + ("# " + "x" * 1021 + "\n") * 2048).encode()
    if text == "<2mib-list>":
        return ("selection: {malicious_counts: [" + ", ".join(["0"] * (700 * 1024)) + "]}\n").encode()
    return text.encode()


# ----------------------------------------------------------------------------------------------
# 3. damaged folders

TRIAL0 = "trials/seed-0"
# damage name -> what it damages; per template.
RUN_DAMAGES = ["metrics_half", "metrics_empty", "metrics_edit", "metrics_delete", "summary_half", "summary_edit",
               "summary_delete", "config_half", "config_nondecimal", "config_subnormal", "checkpoint_half",
               "checkpoint_garbage", "checkpoint_gone_metrics_half"]
COMPARE_DAMAGES = ["comparison_folder_victim", "comparison_folder_victim_abs", "comparison_half", "comparison_edit",
                   "variant_summary_edit", "variant_summary_delete", "variant_metrics_half",
                   "variant_checkpoint_gone_metrics_half", "input_nondecimal", "input_half", "variant_symlink_victim"]
SWEEP_DAMAGES = ["sweep_folder_victim", "sweep_folder_victim_abs", "sweep_half", "trial_json_half",
                 "trial_summary_edit", "trial_summary_half", "trial_metrics_half", "trial_checkpoint_gone_metrics_half",
                 "trial_config_nondecimal", "grid_nondecimal", "trial_symlink_victim"]
TARGETS = {"run": "run1", "compare": "cmp1", "sweep": "sweep1"}
COMMANDS = {
    "run": [("run --resume", ["run", "--out", "run1", "--resume", "--no-progress"]), ("plot", ["plot", "run1"])],
    "compare": [("compare --resume", ["compare", "--out", "cmp1", "--resume", "--no-progress", "--jobs", "1"]),
                ("plot", ["plot", "cmp1"])],
    "sweep": [("sweep --report", ["sweep", "--report", "sweep1"]),
              ("sweep --resume", ["sweep", "--grid", "grid.yaml", "--out", "sweep1", "--resume", "--jobs", "1"])],
}


def folder_expectation(template: str, command: str, damage: str) -> str | None:
    """What a safe tree does; see the module docstring for how each is checked."""
    if damage == "trial_json_half":
        return None  # the record of the trial's process, not part of its run folder's results
    if "--resume" in command:
        return "refuse_or_repair"
    if command == "plot" and template == "run":
        # plot reads metrics.csv and config.yaml of a run
        return "refuse" if damage.startswith(("metrics", "config", "checkpoint_gone")) else None
    if command == "plot":
        # plot reads the folders and caption in comparison.json (not its figures) and each variant's
        # metrics.csv and config.yaml
        return "refuse" if damage.startswith(("comparison_folder", "comparison_half", "variant_metrics",
                                              "variant_checkpoint_gone", "variant_symlink")) else None
    if command == "sweep --report":
        if damage.startswith("sweep"):
            return "refuse"
        if damage.startswith("trial"):
            return "refuse_or_skip"
    return None


def folder_cases() -> list[dict]:
    cases = []
    for template, damages in (("run", RUN_DAMAGES), ("compare", COMPARE_DAMAGES), ("sweep", SWEEP_DAMAGES)):
        for damage in damages:
            for command, argv in COMMANDS[template]:
                cases.append({"category": "folder", "sub": f"{template}/{damage} | {command}", "argv": list(argv),
                              "template": template, "damage": damage,
                              "expect": folder_expectation(template, command, damage)})
    return cases


# ----------------------------------------------------------------------------------------------
# 4. output paths, seeds, grid sizes

LONG_NAME = "n" * 300


def _grid_of(axes: int) -> str:
    names = ["seed", "training.lr", "training.momentum", "client_defense.alpha", "attack.boost", "privacy.clip",
             "privacy.epsilon", "client_defense.q", "client_defense.noise_scale", "attack.backdoor.blend_weight",
             "training.lr_gamma", "data.dirichlet_beta"][:axes]
    lines = ["settings:"] + ["  " + line for line in TINY_YAML.splitlines()] + ["axes:"]
    for name in names:
        values = list(range(10)) if name == "seed" else [round(0.05 * (i + 1), 2) for i in range(10)]
        lines.append(f"  {name}: [{', '.join(str(v) for v in values)}]")
    return "\n".join(lines) + "\n"


def paths_cases() -> list[dict]:
    cases = []
    commands = {
        "run": ["run", *TINY, "--no-progress", "--out"],
        "compare": ["compare", "--config", "cmp.yaml", *TINY, "--no-progress", "--jobs", "1", "--out"],
        "sweep": ["sweep", "--grid", "grid.yaml", "--jobs", "1", "--out"],
        "plot": ["plot"],
        "sweep --report": ["sweep", "--report"],
    }
    for what, path in (("an existing file", "afile"), ("a 300-character name", LONG_NAME),
                       ("a path under a file", "afile/sub")):
        for command, argv in commands.items():
            cases.append({"category": "paths", "sub": f"{command} on {what}", "argv": argv + [path], "expect": "refuse",
                          "files": {"afile": "not a folder\n", "cmp.yaml": ONE_VARIANT_YAML, "grid.yaml": GRID_YAML},
                          "unchanged": ["afile"]})
    for seeds, expect in (("0-99999999999", "refuse"), ("5-1", "refuse"), ("a", "refuse"), ("", "refuse"),
                          ("0,0", "refuse"), ("18446744073709551616", "refuse"), ("-1", "refuse"), ("0-1", None)):
        cases.append({"category": "paths", "sub": f"compare --seeds {seeds!r}", "expect": expect,
                      "argv": ["compare", "--config", "cmp.yaml", *TINY, "--no-progress", "--jobs", "1",
                               "--out", "out", "--seeds", seeds], "files": {"cmp.yaml": ONE_VARIANT_YAML}})
    for axes, extra in ((7, ["--dry-run"]), (7, ["--out", "sw", "--jobs", "1"]), (12, ["--dry-run"])):
        cases.append({"category": "paths", "sub": f"sweep of 10^{axes} trials {' '.join(extra)}", "expect": "refuse",
                      "argv": ["sweep", "--grid", "big.yaml", *extra], "files": {"big.yaml": _grid_of(axes)}})
    return cases


# ----------------------------------------------------------------------------------------------
# 5. concurrent writers


def concurrency_cases() -> list[dict]:
    slow = ["--set", "rounds=12", "--set", "training.local_steps=10"]
    return [
        {"category": "concurrency", "sub": "2x run, one --out, 12 rounds", "kind": "concurrent", "expect": "one_refused",
         "argv": ["run", *TINY, *slow, "--out", "out", "--no-progress"]},
        {"category": "concurrency", "sub": "2x run, one --out, 1 round", "kind": "concurrent", "expect": "one_refused",
         "argv": ["run", *TINY, "--out", "out", "--no-progress"]},
        {"category": "concurrency", "sub": "2x compare, one --out, 12 rounds", "kind": "concurrent",
         "expect": "one_refused", "files": {"cmp.yaml": COMPARE_YAML},
         "argv": ["compare", "--config", "cmp.yaml", *TINY, *slow, "--out", "out", "--no-progress", "--jobs", "1"]},
        {"category": "concurrency", "sub": "2x sweep, one --out", "kind": "concurrent", "expect": "one_refused",
         "files": {"grid.yaml": GRID_YAML}, "argv": ["sweep", "--grid", "grid.yaml", "--out", "out", "--jobs", "1"]},
    ]


def build_cases(seed: int, set_extra: int = 2) -> list[dict]:
    rng = random.Random(seed)
    cases = set_cases(rng, set_extra) + yaml_cases() + folder_cases() + paths_cases() + concurrency_cases()
    for number, case in enumerate(cases):
        case["id"] = number
    return cases


def select_cases(cases: list[dict], count: int | None, seed: int, only: str | None) -> list[dict]:
    if only:
        pattern = re.compile(only)
        cases = [c for c in cases if pattern.search(f"{c['category']}/{c['sub']}")]
    if count is None or count >= len(cases):
        return cases
    rng = random.Random(f"select-{seed}")
    by_category: dict[str, list[dict]] = {}
    for case in cases:
        by_category.setdefault(case["category"], []).append(case)
    chosen = []
    for members in by_category.values():
        share = max(1, round(count * len(members) / len(cases)))
        chosen += rng.sample(members, min(share, len(members)))
    return sorted(chosen, key=lambda c: c["id"])[: max(count, len(by_category))]


# ----------------------------------------------------------------------------------------------
# classification


def last_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def classify(exit_code: int | None, stdout: str, stderr: str, exception: str | None = None,
             timed_out: bool = False) -> tuple[str, str]:
    """("clean" | "other", reason) of one finished call of main."""
    if timed_out:
        return "other", "timeout"
    if exception is not None:
        return "other", "MemoryError" if exception.startswith("MemoryError") else f"exception {exception.split(':')[0]}"
    if "Traceback (most recent call last)" in stdout + stderr:
        return "other", "Traceback in output"
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if "MemoryError" in last:
        return "other", "MemoryError"
    if exit_code == 0:
        return "clean", "exit 0"
    if exit_code in (1, 2):
        if not last.startswith("error: "):
            if any(line.startswith("error: ") for line in lines):
                return "other", f"multi-line error (exit {exit_code})"
            return "other", f"exit {exit_code} without a last 'error: ' line"
        if exit_code == 2 and "fix" not in last:
            return "other", "error line without 'fix' (exit 2)"
        return "clean", f"refused (exit {exit_code})"
    return "other", f"exit code {exit_code}"


def first_line(stdout: str, stderr: str, exception: str | None) -> str:
    if exception:
        return exception.splitlines()[0][:500]
    for text in (stderr, stdout):
        for line in text.splitlines():
            if line.strip():
                return line.strip()[:500]
    return ""


def display_argv(argv: list[str]) -> str:
    """The argv as a short text: the tiny settings as <tiny>, long words cut."""
    words, i = [], 0
    while i < len(argv):
        if argv[i:i + len(TINY)] == TINY:
            words.append(TINY_TOKEN)
            i += len(TINY)
            continue
        word = argv[i]
        words.append(word if len(word) <= 60 else f"{word[:12]}...<{len(word)}-chars>")
        i += 1
    return " ".join(repr(w) if (w == "" or " " in w) and w != TINY_TOKEN else w for w in words)


# ----------------------------------------------------------------------------------------------
# the worker: runs a batch of cases in-process, one call of sim.cli.main each


class CaseTimeout(BaseException):
    pass


def _hash_tree(folder: Path, skip: Path | None = None) -> dict[str, str]:
    """relative path -> digest of every file (symlinks as their target) under `folder`."""
    digests = {}
    if not folder.exists():
        return digests
    for root, dirs, files in os.walk(folder, followlinks=False):
        root_path = Path(root)
        if skip is not None and root_path == skip:
            dirs[:] = []
            continue
        for name in dirs + files:
            path = root_path / name
            rel = str(path.relative_to(folder))
            if skip is not None and path == skip:
                if name in dirs:
                    dirs.remove(name)
                continue
            if path.is_symlink():
                digests[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _state(path: Path) -> str:
    if path.is_symlink():
        return "link:" + os.readlink(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        return "dir"
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Capture:
    """Python-level and fd-level stdout/stderr of one call."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
        self.saved = [os.dup(1), os.dup(2)]
        os.dup2(self.files[0].fileno(), 1)
        os.dup2(self.files[1].fileno(), 2)
        self.out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="replace", write_through=True)
        self.err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="replace", write_through=True)
        self.redirects = [contextlib.redirect_stdout(self.out), contextlib.redirect_stderr(self.err)]
        for redirect in self.redirects:
            redirect.__enter__()
        return self

    def __exit__(self, *exc):
        for redirect in reversed(self.redirects):
            redirect.__exit__(None, None, None)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        texts = []
        for wrapper, file in ((self.out, self.files[0]), (self.err, self.files[1])):
            wrapper.flush()
            python_level = wrapper.buffer.getvalue().decode("utf-8", "replace")
            file.seek(0)
            fd_level = file.read().decode("utf-8", "replace")
            file.close()
            texts.append(python_level + fd_level)
        self.stdout, self.stderr = texts
        return False


def call_main(argv: list[str], limit: int) -> dict:
    from sim.cli import main

    armed = {"on": True}

    def on_alarm(signum, frame):
        if armed["on"]:
            raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    result = {"exit": None, "exception": None, "timed_out": False, "traceback": None}
    start = time.monotonic()
    capture = Capture()
    try:
        with capture:
            signal.alarm(limit)
            try:
                code = main(argv)
                result["exit"] = code
            except CaseTimeout:
                result["timed_out"] = True
            except SystemExit as error:
                code = error.code
                if code is None:
                    result["exit"] = 0
                elif isinstance(code, int):
                    result["exit"] = code
                else:
                    print(code, file=sys.stderr)
                    result["exit"] = 1
                result["system_exit"] = True
            except BaseException as error:  # noqa: BLE001 - the point is to see what escapes
                text = f"{type(error).__name__}: {error}"
                result["exception"] = text[:2000]
                result["traceback"] = traceback.format_exc()[-4000:]
            finally:
                armed["on"] = False
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    result["elapsed_s"] = round(time.monotonic() - start, 3)
    result["stdout"], result["stderr"] = capture.stdout, capture.stderr
    return result


def _edit_csv_first_row(path: Path, column: str, value: float) -> None:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    index = rows[0].index(column)
    rows[1][index] = repr(value)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path.write_text(buffer.getvalue())


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _halve(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _mark_summary(data: dict, figure: float) -> None:
    for key in ("final_main_accuracy", "best_main_accuracy"):
        data[key] = figure


def damage_folder(case_dir: Path, template: str, damage: str, seed: int) -> list[str]:
    """Damages the copied folder; returns the damaged paths (relative to case_dir)."""
    target = case_dir / TARGETS[template]
    victim = case_dir / "victim"
    if template == "run":
        base = target
    elif template == "compare":
        base = target / "a"
    else:
        base = target / TRIAL0
    rel = lambda p: str(p.relative_to(case_dir))  # noqa: E731
    name = damage
    for prefix in ("variant_", "trial_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if damage in ("comparison_folder_victim", "comparison_folder_victim_abs"):
        where = "../victim" if damage.endswith("victim") else str(victim.resolve())
        _edit_json(target / "comparison.json", lambda d: d["variants"]["a"].__setitem__("folder", where))
        return [rel(target / "comparison.json")]
    if damage == "comparison_half":
        _halve(target / "comparison.json")
        return [rel(target / "comparison.json")]
    if damage == "comparison_edit":
        _edit_json(target / "comparison.json", lambda d: _mark_summary(d["variants"]["a"]["summary"], MARK))
        return [rel(target / "comparison.json")]
    if damage in ("sweep_folder_victim", "sweep_folder_victim_abs"):
        where = "../victim" if damage.endswith("victim") else str(victim.resolve())
        _edit_json(target / "sweep.json", lambda d: d["trials"][0].__setitem__("folder", where))
        return [rel(target / "sweep.json")]
    if damage == "sweep_half":
        _halve(target / "sweep.json")
        return [rel(target / "sweep.json")]
    if damage == "grid_nondecimal":
        path = target / "grid.yaml"
        path.write_text(path.read_text().replace("seed: [0, 1]", "seed: [0x0, 1]"))
        return [rel(path)]
    if damage == "input_nondecimal":
        path = target / "compare-input.yaml"
        path.write_text(path.read_text().replace("rounds: 1\n", "rounds: 0x1\n"))
        return [rel(path)]
    if damage == "input_half":
        _halve(target / "compare-input.yaml")
        return [rel(target / "compare-input.yaml")]
    if name == "symlink_victim":
        shutil.rmtree(base)
        os.symlink(os.path.relpath(victim, base.parent), base)
        return [rel(base)]
    metrics, summary, config, checkpoint = (base / "metrics.csv", base / "summary.json", base / "config.yaml",
                                            base / "checkpoint.pt")
    if name == "json_half":
        _halve(base / "trial.json")
        return [rel(base / "trial.json")]
    if name == "metrics_half":
        _halve(metrics)
        return [rel(metrics)]
    if name == "metrics_empty":
        metrics.write_bytes(b"")
        return [rel(metrics)]
    if name == "metrics_edit":
        _edit_csv_first_row(metrics, "main_accuracy", MARK)
        return [rel(metrics)]
    if name == "metrics_delete":
        metrics.unlink()
        return [rel(metrics)]
    if name == "summary_half":
        _halve(summary)
        return [rel(summary)]
    if name == "summary_edit":
        _edit_json(summary, lambda d: _mark_summary(d, MARK))
        return [rel(summary)]
    if name == "summary_delete":
        summary.unlink()
        return [rel(summary)]
    if name == "config_half":
        _halve(config)
        return [rel(config)]
    if name == "config_nondecimal":
        config.write_text(config.read_text().replace("rounds: 1\n", "rounds: 0x1\n"))
        return [rel(config)]
    if name == "config_subnormal":
        config.write_text(re.sub(r"\n  lr: [0-9.e-]+\n", "\n  lr: 1.0e-320\n", config.read_text()))
        return [rel(config)]
    if name == "checkpoint_half":
        _halve(checkpoint)
        return [rel(checkpoint)]
    if name == "checkpoint_garbage":
        size = checkpoint.stat().st_size
        rng = random.Random(f"{seed}-garbage")
        checkpoint.write_bytes(bytes(rng.randrange(256) for _ in range(size)))
        return [rel(checkpoint)]
    if name == "checkpoint_gone_metrics_half":
        checkpoint.unlink()
        _halve(metrics)
        return [rel(checkpoint), rel(metrics)]
    raise ValueError(f"unknown damage {damage}")


class Worker:
    def __init__(self, spec: dict):
        self.spec = spec
        self.root = Path(spec["root"])
        self.limit = int(spec["case_timeout"])
        self.seed = int(spec["seed"])
        self.templates: dict[str, Path] = {}
        self.template_error: str | None = None
        import dataclasses

        import sim.config

        self.paths = set(sim.config.setting_paths())
        self.kinds: dict[str, str] = {}

        def walk(cls, prefix=""):
            for f in dataclasses.fields(cls):
                if "kind" in f.metadata:
                    self.kinds[prefix + f.name] = f.metadata["kind"]
                elif f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
                    walk(f.default_factory, prefix + f.name + ".")

        walk(sim.config.Config)

    def build_templates(self) -> None:
        if self.templates or self.template_error:
            return
        folder = self.root / "templates"
        folder.mkdir(exist_ok=True)
        here = Path.cwd()
        os.chdir(folder)
        try:
            Path("cmp.yaml").write_text(COMPARE_YAML)
            Path("grid.yaml").write_text(GRID_YAML)
            steps = [
                ("run", ["run", *TINY, "--out", "run1", "--no-progress"]),
                ("victim", ["run", *TINY, "--out", "victim", "--no-progress"]),
                ("compare", ["compare", "--config", "cmp.yaml", *TINY, "--out", "cmp1", "--no-progress", "--jobs", "1"]),
                ("sweep", ["sweep", "--grid", "grid.yaml", "--out", "sweep1", "--jobs", "1"]),
            ]
            for name, argv in steps:
                result = call_main(argv, max(self.limit, 180))
                if result["exit"] != 0:
                    self.template_error = (f"template {name} failed: exit {result['exit']} "
                                           f"{result['exception'] or last_error_line(result['stderr'])}")
                    return
            # The victim: a finished run beside the damaged folder, its figures marked so a reader
            # that strays into it shows them.
            _edit_json(Path("victim/summary.json"), lambda d: _mark_summary(d, VICTIM_MARK))
            _edit_csv_first_row(Path("victim/metrics.csv"), "main_accuracy", VICTIM_MARK)
            self.templates = {"run": folder / "run1", "compare": folder / "cmp1", "sweep": folder / "sweep1",
                              "victim": folder / "victim", "grid": folder / "grid.yaml"}
        finally:
            os.chdir(here)

    def resolve_argv(self, case: dict) -> list[str] | None:
        argv = list(case["argv"])
        if "path" in case:
            found = [p for p in case["path"] if p in self.paths]
            if not found:
                return None
            argv = [a.replace("{path}", found[0]) for a in argv]
            if self.kinds.get(found[0], case["setting_kind"]) != case["setting_kind"]:
                raise SystemExit(f"{found[0]} is a {self.kinds[found[0]]} setting in this tree, not {case['setting_kind']}")
        return argv

    def run_case(self, case: dict) -> dict:
        record = {key: case[key] for key in ("id", "category", "sub", "expect")}
        argv = self.resolve_argv(case)
        if argv is None:
            record.update({"class": "skipped", "reason": f"no setting {case['path']} in this tree", "unsafe": False})
            return record
        record["argv"] = display_argv(argv)
        case_dir = self.root / "cases" / f"c{case['id']:04d}"
        case_dir.mkdir(parents=True)
        damaged: list[str] = []
        damaged_states: dict[str, str] = {}
        outside_before: dict[str, str] | None = None
        unchanged: dict[str, str] = {}
        os.chdir(case_dir)
        try:
            for name, text in case.get("files", {}).items():
                (case_dir / name).write_text(text)
            if "file" in case:
                name, kind, content = case["file"]
                (case_dir / name).write_bytes(make_yaml_file(kind, content, self.seed))
            if "template" in case:
                self.build_templates()
                if self.template_error:
                    record.update({"class": "other", "reason": self.template_error, "unsafe": False, "exit": None})
                    return record
                shutil.copytree(self.templates[case["template"]], case_dir / TARGETS[case["template"]], symlinks=True)
                shutil.copytree(self.templates["victim"], case_dir / "victim", symlinks=True)
                shutil.copy(self.templates["grid"], case_dir / "grid.yaml")
                damaged = damage_folder(case_dir, case["template"], case["damage"], self.seed)
                damaged_states = {path: _state(case_dir / path) for path in damaged}
                outside_before = _hash_tree(case_dir, skip=case_dir / TARGETS[case["template"]])
                target_before = _hash_tree(case_dir / TARGETS[case["template"]])
            for name in case.get("unchanged", []):
                unchanged[name] = _state(case_dir / name)
            if case.get("kind") == "concurrent":
                record.update(self.run_concurrent(case, argv))
                return record
            result = call_main(argv, self.limit)
            cls, reason = classify(result["exit"], result["stdout"], result["stderr"], result["exception"],
                                   result["timed_out"])
            record.update({
                "exit": result["exit"], "class": cls, "reason": reason, "elapsed_s": result["elapsed_s"],
                "first_line": first_line(result["stdout"], result["stderr"], result["exception"]),
                "error_line": last_error_line(result["stderr"])[:1000],
                "error_line_chars": len(last_error_line(result["stderr"])),
                "exception": result["exception"], "system_exit": result.get("system_exit", False),
            })
            if result["traceback"] or "Traceback" in result["stdout"] + result["stderr"]:
                record["traceback_tail"] = (result["traceback"] or (result["stdout"] + result["stderr"]))[-1500:]
            unsafe = []
            accepted = result["exit"] == 0 and not result["timed_out"] and result["exception"] is None
            if case["expect"] == "refuse" and accepted:
                unsafe.append("accepted, expected a refusal")
            if (case_dir / "PWNED").exists() or Path(self.root / "PWNED").exists():
                unsafe.append("a YAML tag ran a command (PWNED created)")
            for name, state in unchanged.items():
                if _state(case_dir / name) != state:
                    unsafe.append(f"{name} was changed")
            if "template" in case:
                target = case_dir / TARGETS[case["template"]]
                outside_after = _hash_tree(case_dir, skip=target)
                changed = sorted(k for k in set(outside_before) | set(outside_after)
                                 if outside_before.get(k) != outside_after.get(k))
                if changed:
                    unsafe.append("wrote outside the folder: " + ", ".join(changed[:5]))
                target_after = _hash_tree(target)
                rewritten = [k for k, v in target_after.items() if target_before.get(k) != v
                             and k.endswith((".md", ".csv", ".json", ".txt"))]
                marked = [k for k in rewritten if MARK_PATTERN.search((target / k).read_text(errors="replace"))]
                if accepted and MARK_PATTERN.search(result["stdout"]):
                    marked.append("stdout")
                if marked:
                    unsafe.append("an edited or outside figure read as finished, in: " + ", ".join(marked[:5]))
                still = [p for p in damaged if _state(case_dir / p) == damaged_states[p]]
                if case["expect"] == "refuse_or_repair" and accepted and still:
                    unsafe.append("exit 0 with the damaged file(s) left as they were: " + ", ".join(still))
                if case["expect"] == "refuse_or_skip" and accepted:
                    results = target / "results.csv"
                    if results.is_file() and any(line.startswith("seed-0,") for line in results.read_text().splitlines()):
                        unsafe.append("the damaged trial seed-0 listed in results.csv")
            record["unsafe"] = bool(unsafe)
            if unsafe:
                record["unsafe_reason"] = "; ".join(unsafe)
            record["restart"] = bool(result["timed_out"] or (result["exception"] or "").startswith("MemoryError"))
            return record
        finally:
            os.chdir(self.root)
            shutil.rmtree(case_dir, ignore_errors=True)

    def run_concurrent(self, case: dict, argv: list[str]) -> dict:
        command = [sys.executable, "-m", "sim", *argv]
        start = time.monotonic()
        processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        outcomes = []
        limit = 4 * self.limit
        for process in processes:
            try:
                stdout, stderr = process.communicate(timeout=max(1, limit - (time.monotonic() - start)))
                timed_out = False
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
                timed_out = True
            stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
            cls, reason = classify(process.returncode, stdout, stderr, None, timed_out)
            outcomes.append({"exit": process.returncode, "class": cls, "reason": reason,
                             "first_line": first_line(stdout, stderr, None), "error_line": last_error_line(stderr)[:1000]})
            if "Traceback" in stdout + stderr:
                outcomes[-1]["traceback_tail"] = (stdout + stderr)[-1500:]
        others = [o for o in outcomes if o["class"] != "clean"]
        exits = sorted(o["exit"] for o in outcomes)
        record = {
            "exit": exits, "class": "other" if others else "clean",
            "reason": "; ".join(o["reason"] for o in others) if others else f"exits {exits}",
            "elapsed_s": round(time.monotonic() - start, 3), "processes": outcomes,
            "first_line": next((o["error_line"] for o in outcomes if o["exit"] != 0), outcomes[0]["first_line"]),
            "error_line": next((o["error_line"] for o in outcomes if o["exit"] != 0), ""),
        }
        record["unsafe"] = all(o["exit"] == 0 for o in outcomes)
        if record["unsafe"]:
            record["unsafe_reason"] = "both writers of one folder exited 0"
        return record


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("memory_bytes"):
        import resource

        limit = int(spec["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.chdir(spec["root"])
    import sim

    source = str(Path(sim.__file__).resolve().parent.parent)
    if source != str(Path(spec["source"]).resolve()):
        raise SystemExit(f"worker imported sim from {source}, not {spec['source']}")
    worker = Worker(spec)
    with open(spec["results"], "a") as results, open(spec["progress"], "a") as progress:
        for case in spec["cases"]:
            progress.write(f"start {case['id']} {time.time()}\n")
            progress.flush()
            record = worker.run_case(case)
            restart = record.pop("restart", False)
            results.write(json.dumps(record) + "\n")
            results.flush()
            if restart:
                return 3  # a fresh process for the rest: a timeout or MemoryError may leave state behind
    return 0


# ----------------------------------------------------------------------------------------------
# the parent: batches in subprocesses, results, summary


def git_info(source: Path) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty_sim_files": git("status", "--porcelain", "--", "sim").splitlines()}


def run_batch(source: Path, cases: list[dict], root: Path, case_timeout: int, seed: int, memory_bytes: int,
              log) -> list[dict]:
    """All of `cases` in as many worker processes as it takes; a record per case."""
    records: dict[int, dict] = {}
    remaining = list(cases)
    attempt = 0
    while remaining:
        attempt += 1
        results = root / f"results-{remaining[0]['id']}-{attempt}.jsonl"
        progress = root / f"progress-{remaining[0]['id']}-{attempt}.txt"
        spec = {"cases": remaining, "root": str(root), "case_timeout": case_timeout, "seed": seed,
                "results": str(results), "progress": str(progress), "source": str(source),
                "memory_bytes": memory_bytes}
        spec_path = root / f"spec-{remaining[0]['id']}-{attempt}.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONPATH=str(source), OMP_NUM_THREADS="1", MPLCONFIGDIR=str(root / "mpl"),
                   PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONSTARTUP", None)
        worker_log = open(root / f"worker-{remaining[0]['id']}-{attempt}.log", "wb")
        process = subprocess.Popen([sys.executable, str(SCRIPT), "--worker", str(spec_path)], cwd=root, env=env,
                                   stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        by_id = {case["id"]: case for case in cases}
        current, since = None, time.monotonic()
        seen = 0
        while True:
            code = process.poll()
            if progress.exists():
                lines = progress.read_text().splitlines()
                if len(lines) > seen:
                    seen = len(lines)
                    current, since = int(lines[-1].split()[1]), time.monotonic()
            if results.exists():
                for line in results.read_text().splitlines():
                    record = json.loads(line)
                    if record["id"] not in records:
                        records[record["id"]] = record
                        log(record)
            if code is not None:
                break
            allowance = (4 if current is not None and by_id[current].get("kind") == "concurrent" else 1)
            if time.monotonic() - since > allowance * case_timeout + 240:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                if current is not None and current not in records:
                    case = by_id[current]
                    records[current] = {"id": current, "category": case["category"], "sub": case["sub"],
                                        "expect": case["expect"], "argv": display_argv(case["argv"]), "exit": None,
                                        "class": "other", "reason": "hard timeout: worker killed", "unsafe": False,
                                        "first_line": ""}
                    log(records[current])
                break
            time.sleep(0.3)
        worker_log.close()
        if process.returncode not in (0, 3, -9) and current is not None and current not in records:
            case = by_id[current]
            tail = (root / f"worker-{remaining[0]['id']}-{attempt}.log").read_text(errors="replace")[-1500:]
            records[current] = {"id": current, "category": case["category"], "sub": case["sub"],
                                "expect": case["expect"], "argv": display_argv(case["argv"]), "exit": None,
                                "class": "other", "reason": f"worker died (returncode {process.returncode})",
                                "unsafe": False, "first_line": tail.strip().splitlines()[-1] if tail.strip() else "",
                                "traceback_tail": tail}
            log(records[current])
        if current is None and process.returncode not in (0, 3):
            tail = (root / f"worker-{remaining[0]['id']}-{attempt}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"the worker failed before its first case (returncode {process.returncode}):\n{tail}")
        remaining = [case for case in remaining if case["id"] not in records]
    return [records[case["id"]] for case in cases]


def counts(records: list[dict]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for record in records:
        if record["class"] == "skipped":
            continue
        for key in (record["category"], "total"):
            row = table.setdefault(key, {"cases": 0, "clean": 0, "other": 0, "unsafe": 0})
            row["cases"] += 1
            row[record["class"]] += 1
            row["unsafe"] += bool(record.get("unsafe"))
    ordered = {c: table[c] for c in CATEGORIES if c in table}
    if "total" in table:
        ordered["total"] = table["total"]
    return ordered


def summary_table(table: dict[str, dict[str, int]]) -> str:
    lines = [f"{'category':<12} {'cases':>6} {'clean':>6} {'other':>6} {'unsafe':>6}"]
    for name, row in table.items():
        lines.append(f"{name:<12} {row['cases']:>6} {row['clean']:>6} {row['other']:>6} {row['unsafe']:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="the source tree to test (its sim/ is imported)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the case list (default 0)")
    parser.add_argument("--cases", type=int, help="this many of the cases, drawn per category (default: all)")
    parser.add_argument("--only", metavar="REGEX", help="only the cases whose 'category/sub' matches")
    parser.add_argument("--set-extra", type=int, default=2,
                        help="values per setting drawn from the ones with no expectation (default 2)")
    parser.add_argument("--case-timeout", type=int, default=60, help="seconds per case (default 60)")
    parser.add_argument("--memory-gib", type=float, default=6.0, help="address-space cap of a batch (default 6)")
    parser.add_argument("--out", metavar="FILE.json", help="write every case's record here")
    parser.add_argument("--work", metavar="DIR", help="the temporary folder (default: a new one, removed after)")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    cases = select_cases(build_cases(args.seed, args.set_extra), args.cases, args.seed, args.only)
    if args.list:
        for case in cases:
            print(f"{case['id']:4d} {case['category']:<12} {case['sub']}  [{display_argv(case['argv'])}]")
        print(f"{len(cases)} cases")
        return 0
    if not args.source:
        parser.error("--source DIR is required")
    source = Path(args.source).resolve()
    if not (source / "sim" / "cli.py").is_file():
        parser.error(f"{source} holds no sim/cli.py")
    info = git_info(source)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="fuzz-cli-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"fuzz: {len(cases)} cases against {source} (commit {info['commit'][:12] or '?'}), work folder {work}",
          flush=True)

    def log(record: dict) -> None:
        flag = " UNSAFE" if record.get("unsafe") else ""
        print(f"[{record['id']:4d}] {record['category']:<11} {record['class']:<6}{flag} "
              f"{record.get('reason', '')[:40]:<40} {record['sub'][:70]}", flush=True)

    records: list[dict] = []
    try:
        for category in CATEGORIES:
            batch = [case for case in cases if case["category"] == category]
            if batch:
                root = work / category
                root.mkdir(exist_ok=True)
                records += run_batch(source, batch, root, args.case_timeout, args.seed,
                                     int(args.memory_gib * (1 << 30)), log)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.time() - started
    table = counts(records)
    report = {"source": str(source), **info, "seed": args.seed, "set_extra": args.set_extra,
              "case_timeout_s": args.case_timeout, "memory_gib": args.memory_gib, "started": time.strftime(
                  "%Y-%m-%dT%H:%M:%S", time.localtime(started)), "elapsed_s": round(elapsed, 1),
              "counts": table, "cases": records}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(summary_table(table))
    print(f"elapsed: {elapsed:.0f} s" + (f"; records: {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
