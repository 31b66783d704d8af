"""One round's time, split into its parts, before and after a change, against its arithmetic floor.

For two settings,

* `demo`    configs/demo.yaml's round with the full test set: 10 clients x 20 local steps (batch
            16), Multi-Krum, the 9-pixel backdoor (MGDA attackers), 10,000 clean + the triggered
            non-target test images scored at eval.batch_size 1000;
* `table1`  one round of configs/table1-fmnist.yaml (10 clients x 10 local epochs of 600 images,
            batch 16; same attack, aggregator and scoring),

it runs a one-round `sim.runner.run` (no client defense, one torch thread) in a fresh process per
measurement: with the simulator of this working tree and the preset's settings ("after"; both presets
train with `training.memory_format: auto`, i.e. channels_last on a CPU), with this tree and
`training.memory_format: contiguous` ("after, contiguous training": the layout of before, so its
scores must equal before's bit for bit), and with the simulator of another tree ("before", default
the detached worktree /work/wt-before of commit 853196d, imported through PYTHONPATH), alternating
the order so that load on the shared machine hits all alike. In
each process the round is split by wrapping the runner's parts:

    local training   the engine's `train_clients` (every selected client's local steps)
    aggregation      the upload pipeline (DP, model poisoning: none here) and the aggregator
    evaluation       `_Parts.scores`: the global model scored on the clean and triggered test sets
    bookkeeping      the rest of the round: selection, the candidate model and its checks, the
                     record, the checkpoint and the metrics.csv write
    round            the sum of the four

Each part's time is the CPU time of the process (`time.process_time`; one torch thread, so one
busy thread), which a machine shared with other work disturbs far less than wall time does (a
process waiting for a core runs no CPU time); the wall times are kept in the JSON file too.
(set-up: data loading, the model, the engine, the test set; and the end of the run: summary, plot,
manifest; are per run and reported apart.) The best of `--repeats` measurements counts for each
part; the ratio before / after is taken between the best of each.

The arithmetic floor of a part is its floating-point operations (torch.utils.flop_counter: matrix
products and convolutions, forward and backward, counted once in this tree on the same round;
Table I's training counted at 20 and 10 local steps and extrapolated linearly to its 380) at the
rate of a 512x512 float32 matrix product on one thread (CPU time), measured in the same run between
the measurements (the best rate counts). Bookkeeping has no arithmetic floor.

    python bench/round.py                       # both settings, 3 repeats
    python bench/round.py --cases demo --repeats 2 --before /path/to/other/tree

Results: bench/results/round_cpu.json and round_cpu.md. The machine is shared (2 cores, other work
running): absolute times move with its load; the interleaved ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = Path("/work/wt-before")
RESULTS = Path(__file__).parent / "results"
RESULT_PREFIX = "RESULT "
PARTS = ("local training", "aggregation", "evaluation", "bookkeeping")
CASES = {
    "demo": {"preset": "demo", "overrides": ["rounds=1", "eval.test_size=null"], "local_steps": 20},
    "table1": {"preset": "table1-fmnist", "overrides": ["rounds=1"], "local_steps": 380},
}
# The after tree with `training.memory_format: contiguous`: the layout of "before" and of every result
# committed before the presets moved to `auto` (channels_last training on a CPU), so that the
# scores can be compared bit for bit and the evaluation's gain read apart from the layout's.
CONTIGUOUS = "after, contiguous training"


# ----------------------------------------------------------------------------------------------
# in a child process, with `sim` imported from the tree under test


def _child(spec: dict) -> None:
    import torch

    torch.set_num_threads(1)
    from sim import runner
    from sim.config import load_config

    cfg = load_config(preset=spec["preset"], overrides=spec["overrides"])
    keys = (*PARTS, "round", "setup", "checkpoint and metrics")
    clocks = {"cpu": time.process_time, "wall": time.perf_counter}
    spent = {clock: {key: 0.0 for key in keys} for clock in clocks}
    state = {"metrics_writes": 0}

    def timed(function, part):
        def wrapper(*args, **kwargs):
            started = {clock: read() for clock, read in clocks.items()}
            try:
                return function(*args, **kwargs)
            finally:
                for clock, read in clocks.items():
                    spent[clock][part] += read() - started[clock]
        return wrapper

    real_parts_init = runner._Parts.__init__
    real_scores = runner._Parts.scores

    def parts_init(self, *args, **kwargs):
        real_parts_init(self, *args, **kwargs)
        self.engine.train_clients = timed(self.engine.train_clients, "local training")
        self.uploads = _TimedCall(self.uploads, timed)
        self.aggregator = _TimedCall(self.aggregator, timed)

    runner._Parts.__init__ = timed(parts_init, "setup")
    runner._Parts.scores = timed(real_scores, "evaluation")
    runner._round = timed(runner._round, "round")
    real_save = runner.save_checkpoint
    real_write = runner.write_atomic
    runner.save_checkpoint = timed(real_save, "checkpoint and metrics")

    def write_atomic(path, *args, **kwargs):
        if Path(path).name == "metrics.csv" and state["metrics_writes"] == 0:
            state["metrics_writes"] += 1
            return timed(real_write, "checkpoint and metrics")(path, *args, **kwargs)
        return real_write(path, *args, **kwargs)

    runner.write_atomic = write_atomic
    with tempfile.TemporaryDirectory() as folder:
        started = {clock: read() for clock, read in clocks.items()}
        summary = runner.run(cfg, Path(folder) / "run", progress=False)
        total = {clock: read() - started[clock] for clock, read in clocks.items()}
    for clock, times in spent.items():
        # `round` holds train + aggregation + evaluation + the rest of `_round`
        times["bookkeeping"] = times["round"] - times["local training"] - times["aggregation"] - times["evaluation"] \
            + times["checkpoint and metrics"]
        times["round"] = sum(times[part] for part in PARTS)
        times["end of run"] = total[clock] - times["setup"] - times["round"]
    print(RESULT_PREFIX + json.dumps({"seconds": spent["cpu"], "wall_seconds": spent["wall"],
                                      "final_main_accuracy": summary["final_main_accuracy"],
                                      "final_backdoor_accuracy": summary["final_backdoor_accuracy"],
                                      "final_test_loss": summary["final_test_loss"]}), flush=True)


class _TimedCall:
    """Times calls of a callable part (uploads, aggregator) as aggregation; other attributes pass through."""

    def __init__(self, inner, timed):
        self.__dict__["_inner"] = inner
        self.__dict__["_call"] = timed(inner.__call__, "aggregation")

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)


def _flops_child(spec: dict) -> None:
    """FLOPs of one round's training, aggregation and evaluation, counted by FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    from sim import runner
    from sim.config import load_config

    counts = {}
    for steps in spec["count_steps"]:
        cfg = load_config(preset=spec["preset"], overrides=[*spec["overrides"], f"training.local_steps={steps}"])
        flops = {part: 0 for part in PARTS[:3]}
        counter_of = {}

        def counted(function, part):
            def wrapper(*args, **kwargs):
                with FlopCounterMode(display=False) as counter:
                    result = function(*args, **kwargs)
                flops[part] += counter.get_total_flops()
                return result
            return wrapper

        real_init = runner._Parts.__init__

        def parts_init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            self.engine.train_clients = counted(self.engine.train_clients, "local training")
            self.aggregator = _CountedCall(self.aggregator, counted)
            counter_of["scores"] = self.scores

        runner._Parts.__init__ = parts_init
        real_scores = runner._Parts.scores
        runner._Parts.scores = counted(real_scores, "evaluation")
        with tempfile.TemporaryDirectory() as folder:
            runner.run(cfg, Path(folder) / "run", progress=False)
        runner._Parts.__init__, runner._Parts.scores = real_init, real_scores
        counts[steps] = flops
    print(RESULT_PREFIX + json.dumps(counts), flush=True)


class _CountedCall(_TimedCall):
    def __init__(self, inner, counted):
        self.__dict__["_inner"] = inner
        self.__dict__["_call"] = counted(inner.__call__, "aggregation")


def _profile_child(spec: dict) -> None:
    """The top operators (self CPU time) of one round of this tree, by torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    from sim import runner
    from sim.config import load_config

    cfg = load_config(preset=spec["preset"], overrides=spec["overrides"])
    real_round = runner._round
    table = {}

    def profiled(*args, **kwargs):
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            result = real_round(*args, **kwargs)
        events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
        total = sum(event.self_cpu_time_total for event in events)
        table["total_s"] = total / 1e6
        table["top"] = [{"op": event.key, "self_s": event.self_cpu_time_total / 1e6, "calls": event.count}
                        for event in events[:12]]
        return result

    runner._round = profiled
    with tempfile.TemporaryDirectory() as folder:
        runner.run(cfg, Path(folder) / "run", progress=False)
    print(RESULT_PREFIX + json.dumps(table), flush=True)


# ----------------------------------------------------------------------------------------------
# the parent


def _spawn(mode: str, spec: dict, tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), f"--{mode}", json.dumps(spec)],
                               cwd=tree, env=env, capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"{mode} run in {tree} failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def _floor_flops(case: dict, counts: dict) -> dict:
    """FLOPs of each part for the case's local steps, from the counts at the counted step numbers."""
    steps = sorted(int(s) for s in counts)
    result = dict(counts[str(steps[-1])])
    if case["local_steps"] != steps[-1]:
        low, high = counts[str(steps[0])], counts[str(steps[-1])]
        per_step = (high["local training"] - low["local training"]) / (steps[-1] - steps[0])
        result["local training"] = high["local training"] + per_step * (case["local_steps"] - steps[-1])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="demo,table1", help="comma-separated, of: " + ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, default=DEFAULT_BEFORE,
                        help="the tree whose simulator is 'before' (default: /work/wt-before, commit 853196d)")
    parser.add_argument("--before-label", default="853196d")
    parser.add_argument("--out", type=Path, default=RESULTS / "round_cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--flops", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    if args.flops:
        _flops_child(json.loads(args.flops))
        return 0
    if args.profile:
        _profile_child(json.loads(args.profile))
        return 0

    sys.path.insert(0, str(REPO))
    from bench.common import device_name, matmul_rate

    cases = [name.strip() for name in args.cases.split(",")]
    unknown = [name for name in cases if name not in CASES]
    if unknown:
        parser.error(f"--cases {','.join(unknown)} is not allowed; allowed: {', '.join(CASES)}")
    if not (args.before / "sim").is_dir():
        parser.error(f"--before {args.before} holds no sim/ package; fix: "
                     f"git -C {REPO} worktree add --detach {args.before} 853196d")
    trees = {"before": args.before.resolve(), "after": REPO, CONTIGUOUS: REPO}
    versions = ("before", "after", CONTIGUOUS)
    started = time.time()
    rates, runs = [], {name: {version: [] for version in versions} for name in cases}
    for repeat in range(args.repeats):
        for name in cases:
            for version in (versions if repeat % 2 == 0 else versions[::-1]):
                spec = {"preset": CASES[name]["preset"], "overrides": CASES[name]["overrides"]
                        + (["training.memory_format=contiguous"] if version == CONTIGUOUS else [])}
                rates.append(matmul_rate())
                result = _spawn("child", spec, trees[version])
                runs[name][version].append(result)
                print(f"[{repeat + 1}/{args.repeats}] {name} {version}: round {result['seconds']['round']:.2f} s "
                      f"(evaluation {result['seconds']['evaluation']:.2f} s)", file=sys.stderr, flush=True)
    rates.append(matmul_rate())
    rate = max(rates)

    report = {"device": device_name("cpu"), "threads": 1, "before": args.before_label, "after": "this tree",
              "repeats": args.repeats, "matmul_512_gflops_best": rate / 1e9,
              "matmul_512_gflops_all": [r / 1e9 for r in rates], "cases": {}}
    for name in cases:
        case = CASES[name]
        spec = {"preset": case["preset"], "overrides": case["overrides"],
                "count_steps": [case["local_steps"]] if case["local_steps"] <= 20 else [10, 20]}
        flops = _floor_flops(case, _spawn("flops", spec, REPO))
        best = {version: {key: min(run["seconds"][key] for run in runs[name][version])
                          for key in (*PARTS, "round", "setup", "end of run")}
                for version in versions}
        scores = {version: {k: v for k, v in runs[name][version][0].items() if k not in ("seconds", "wall_seconds")}
                  for version in versions}
        report["cases"][name] = {
            "settings": {"preset": case["preset"], "overrides": case["overrides"], "local_steps": case["local_steps"]},
            "best_s": best,
            "all_s": {version: [run["seconds"] for run in runs[name][version]] for version in versions},
            "all_wall_s": {version: [run["wall_seconds"] for run in runs[name][version]] for version in versions},
            "ratio_before_over_after": {key: best["before"][key] / best["after"][key] for key in (*PARTS, "round")},
            "ratio_before_over_contiguous": {key: best["before"][key] / best[CONTIGUOUS][key]
                                             for key in (*PARTS, "round")},
            "ratio_contiguous_over_after": {key: best[CONTIGUOUS][key] / best["after"][key]
                                            for key in (*PARTS, "round")},
            "flops": flops,
            "floor_s": {part: flops.get(part, 0) / rate for part in PARTS[:3]},
            "times_floor_after": {part: best["after"][part] / (flops[part] / rate) if flops.get(part) else None
                                  for part in PARTS[:3]},
            "times_floor_before": {part: best["before"][part] / (flops[part] / rate) if flops.get(part) else None
                                   for part in PARTS[:3]},
            # the same layout as before: the change must not move a bit of the scores
            "same_scores": scores["before"] == scores[CONTIGUOUS],
            "versions": list(versions),
            "scores": scores,
        }
    report["profile_demo_after"] = _spawn("profile", {key: CASES["demo"][key] for key in ("preset", "overrides")},
                                          REPO) if "demo" in cases else None
    report["elapsed_s"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


def _markdown(report: dict) -> str:
    lines = [
        "# One round, split into its parts: before / after",
        "",
        f"`python bench/round.py` on {report['device']}, one torch thread per process, seconds of CPU "
        "time of the process (wall times in the JSON file). The machine is shared (2 cores, other work running) "
        "and noisy: absolute seconds move with its load (memory and cache contention reach CPU time too); before "
        "and after alternate in one run, so their ratios are the figures to read. Best of "
        f"{report['repeats']} one-round runs per version; before = commit {report['before']}, after = this tree with the presets' settings "
        "(`training.memory_format: auto`: channels_last training on this CPU).",
        "",
        f"Arithmetic floor: FLOPs (torch.utils.flop_counter) / {report['matmul_512_gflops_best']:.1f} GFLOP/s, the "
        "best rate of a 512x512 float32 matrix product on one thread measured between the runs "
        f"(all: {', '.join(f'{r:.1f}' for r in report['matmul_512_gflops_all'])}).",
        "",
    ]
    for name, case in report["cases"].items():
        settings = case["settings"]
        lines += [f"## {name}: preset `{settings['preset']}`, `{' '.join(settings['overrides'])}` "
                  f"({settings['local_steps']} local steps per client)", "",
                  "| part | before (s) | after (s) | before / after | GFLOP | floor (s) | before / floor | after / floor |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for part in (*PARTS, "round"):
            before, after = case["best_s"]["before"][part], case["best_s"]["after"][part]
            flops = case["flops"].get(part) if part != "round" else sum(case["flops"].get(p, 0) for p in PARTS[:3])
            floor = flops / (report["matmul_512_gflops_best"] * 1e9) if flops else None
            cells = [part, f"{before:.3f}", f"{after:.3f}", f"{before / after:.2f}x",
                     f"{flops / 1e9:.2f}" if flops else "-", f"{floor:.3f}" if floor else "-",
                     f"{before / floor:.2f}x" if floor else "-", f"{after / floor:.2f}x" if floor else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        contiguous = case["best_s"][CONTIGUOUS]
        lines += ["", f"After with `training.memory_format: contiguous` (this tree, the layout of before): round "
                      f"{contiguous['round']:.3f} s (local training {contiguous['local training']:.3f} s, evaluation "
                      f"{contiguous['evaluation']:.3f} s, {contiguous['evaluation'] / case['floor_s']['evaluation']:.2f}x "
                      f"its floor); round before / contiguous {case['ratio_before_over_contiguous']['round']:.2f}x, "
                      f"contiguous / after {case['ratio_contiguous_over_after']['round']:.2f}x (local training "
                      f"{case['ratio_contiguous_over_after']['local training']:.2f}x). Same scores as before in the same "
                      f"layout: {'yes' if case['same_scores'] else 'NO'} ({case['scores'][CONTIGUOUS]}); after, "
                      f"channels_last training (float rounding of the convolutions' sums): {case['scores']['after']}."]
        lines += ["", f"Per run, not per round: set-up {case['best_s']['before']['setup']:.2f} s before, "
                      f"{case['best_s']['after']['setup']:.2f} s after; end of run (summary, plot, manifest) "
                      f"{case['best_s']['before']['end of run']:.2f} s before, {case['best_s']['after']['end of run']:.2f} s "
                      f"after.", ""]
    profile = report.get("profile_demo_after")
    if profile:
        lines += ["## Profile of a demo round after the change (torch.profiler, self CPU time)", "",
                  f"Total self CPU time of the profiled round: {profile['total_s']:.2f} s.", "",
                  "| operator | self (s) | share | calls |", "| --- | ---: | ---: | ---: |"]
        for entry in profile["top"]:
            lines.append(f"| `{entry['op']}` | {entry['self_s']:.3f} | {100 * entry['self_s'] / profile['total_s']:.1f}% "
                         f"| {entry['calls']} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
