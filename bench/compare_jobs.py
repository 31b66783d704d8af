"""Wall time of `leadfl-sim compare` with `--jobs 1` (runs one after another in one process) and
`--jobs N` (N one-thread processes at once), measured back to back in one invocation, and the
Table I preset's wall time estimated from the per-round times of the same runs.

The comparison is the Table I preset (`table1-fmnist`: none, LDP, FL-WBC, LeadFL on FashionMNIST)
cut to `--rounds` rounds of `--local-epochs` local epochs, so that it ends in minutes. Each
repeat runs the `--jobs 1` and the `--jobs N` command alternately, so load on the machine from
other work hits both alike; the speed-up is the ratio of the median wall times. Every run's
`metrics.csv` gives the seconds of each of its rounds (training and scoring, not process start
or data loading), from which the full preset (80 rounds of 10 local epochs) is estimated:

    round(10 epochs) ~= 10 * round(1 epoch)     (training dominates; scoring is counted 10 times,
                                                 so this over-estimates)
    Table I, --jobs 1 ~= 80 * sum over the variants of round(10 epochs)
    Table I, --jobs N ~= that / the measured speed-up

    python bench/compare_jobs.py [--jobs 2] [--rounds 1] [--local-epochs 1] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import device_name  # noqa: E402
from sim.reporting import read_metrics  # noqa: E402

PRESET = "table1-fmnist"
FULL_ROUNDS, FULL_EPOCHS = 80, 10


def compare_command(out: Path, jobs: int, args) -> list[str]:
    return [sys.executable, "-m", "sim", "compare", "--preset", PRESET, "--rounds", str(args.rounds),
            "--set", f"training.local_epochs={args.local_epochs}", "--jobs", str(jobs), "--out", str(out),
            "--no-progress"]


def timed(out: Path, jobs: int, args) -> tuple[float, dict[str, list[float]]]:
    """Wall seconds of one compare, and each variant's per-round seconds from its metrics.csv."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    subprocess.run(compare_command(out, jobs, args), check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    comparison = json.loads((out / "comparison.json").read_text())
    rounds = {label: [row["wall_time_s"] for row in read_metrics(out / entry["folder"])]
              for label, entry in comparison["variants"].items()}
    return wall, rounds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="processes of the parallel command")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    load_at_start = os.getloadavg()
    walls = {1: [], args.jobs: []}
    rounds: dict[int, dict[str, list[float]]] = {1: {}, args.jobs: {}}
    scratch = Path(tempfile.mkdtemp(prefix="compare-jobs-"))
    try:
        for repeat in range(args.repeats):
            for jobs in (1, args.jobs):
                out = scratch / f"jobs{jobs}-{repeat}"
                wall, per_round = timed(out, jobs, args)
                walls[jobs].append(wall)
                for label, seconds in per_round.items():
                    rounds[jobs].setdefault(label, []).extend(seconds)
                print(f"--jobs {jobs}: {wall:.1f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_at_end = os.getloadavg()

    serial, parallel = statistics.median(walls[1]), statistics.median(walls[args.jobs])
    speedup = serial / parallel
    # Per-round seconds of each variant run alone in one process (--jobs 1): the serial cost.
    per_round = {label: statistics.median(values) for label, values in rounds[1].items()}
    scale = FULL_EPOCHS / args.local_epochs
    table1_serial = FULL_ROUNDS * scale * sum(per_round.values())
    result = {
        "cpu": device_name("cpu"), "usable_cores": len(os.sched_getaffinity(0)),
        "load_average_at_start": load_at_start, "load_average_at_end": load_at_end,
        "preset": PRESET, "rounds": args.rounds, "local_epochs": args.local_epochs, "repeats": args.repeats,
        "measured": {
            "wall_s_jobs_1": walls[1], f"wall_s_jobs_{args.jobs}": walls[args.jobs],
            "speedup": speedup,
            "round_s_at_local_epochs_jobs_1": per_round,
            f"round_s_at_local_epochs_jobs_{args.jobs}": {k: statistics.median(v) for k, v in rounds[args.jobs].items()},
        },
        "estimated": {
            "table1_round_s_jobs_1": scale * sum(per_round.values()),
            "table1_hours_jobs_1": table1_serial / 3600,
            f"table1_hours_jobs_{args.jobs}": table1_serial / speedup / 3600,
        },
    }
    out = Path(args.out or ROOT / "bench" / "results" / "compare_jobs_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# `compare --jobs {args.jobs}` against `--jobs 1` ({PRESET}, {args.rounds} round(s) of {args.local_epochs} "
        f"local epoch(s), 4 variants)",
        "",
        f"{result['cpu']}; usable cores {result['usable_cores']}; load average (1, 5, 15 min) "
        f"{' '.join(f'{x:.1f}' for x in load_at_start)} at the start, {' '.join(f'{x:.1f}' for x in load_at_end)} "
        "at the end (other work shared the machine).",
        "",
        "Measured, back to back in one invocation:",
        "",
        "| command | wall time (s), median of repeats |",
        "|---|---|",
        f"| `--jobs 1` | {serial:.1f} |",
        f"| `--jobs {args.jobs}` | {parallel:.1f} |",
        "",
        f"Speed-up of `--jobs {args.jobs}`: **{speedup:.2f}x**.",
        "",
        f"Seconds per round at {args.local_epochs} local epoch(s), `--jobs 1`: "
        + ", ".join(f"{label} {seconds:.1f}" for label, seconds in per_round.items()) + ".",
        "",
        f"Estimated (not run): the full preset ({FULL_ROUNDS} rounds of {FULL_EPOCHS} local epochs) takes "
        f"{table1_serial / 3600:.1f} h with `--jobs 1` and {table1_serial / speedup / 3600:.1f} h with "
        f"`--jobs {args.jobs}` at this load, scaling each round's time by {scale:g} (local epochs) and dividing by "
        "the measured speed-up; scoring is scaled too, so this over-estimates.",
        "",
        f"`python bench/compare_jobs.py --jobs {args.jobs} --rounds {args.rounds} --local-epochs {args.local_epochs} "
        f"--repeats {args.repeats}`",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
