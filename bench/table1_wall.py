"""The Table I preset's wall time: what its rows took, and what the measured speed-ups make of it.

Reads a `leadfl-sim compare --preset table1-fmnist` folder (default: docs/results/table1-fmnist)
and reads, per row, the seconds of its rounds from `metrics.csv` (training and scoring; process
start and data loading are not counted). Those rows ran as one-thread processes, several at
once on the shared machine, so a row's seconds include the other work of its time, and spells
of heavy load (or a pause of the process) make some rounds many times slower: the estimates use
a row's median round times its rounds. From them:

    one process, rows one after another   = the sum over rows of median round x rounds
    --jobs N                              ~= that / the measured --jobs speed-up
                                             (bench/results/compare_jobs_cpu.json)
    --jobs N, training.memory_format=channels_last
                                          ~= that / the measured local-step speed-up
                                             (bench/results/train_step_cpu.json; training only,
                                             so this under-estimates the time)

and, from bench/results/train_step_cpu.json, the floor: the preset's local training alone at the
rate of a large matrix product on every core. Rows that have not reached the last round are
named as partial; their median round counts for all rounds.

    python bench/table1_wall.py [--run docs/results/table1-fmnist] [--target-hours 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import device_name  # noqa: E402
from sim.io import write_atomic  # noqa: E402
from sim.reporting import read_metrics  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def row_seconds(run_dir: Path, rounds: int) -> dict:
    """Rounds finished, their summed seconds, and the median round's seconds times `rounds`."""
    seconds = [row["wall_time_s"] for row in read_metrics(run_dir)]
    done = len(seconds)
    total = sum(seconds)
    median = statistics.median(seconds)
    return {"rounds_done": done, "seconds_done": total, "median_round_s": median,
            "hours_at_median_round": median * rounds / 3600}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(ROOT / "docs" / "results" / "table1-fmnist"))
    parser.add_argument("--target-hours", type=float, default=2.0)
    parser.add_argument("--out", default=str(RESULTS / "table1_wall_cpu.json"))
    args = parser.parse_args(argv)
    run = Path(args.run)
    comparison = json.loads((run / "comparison.json").read_text())
    rounds = int(comparison["base_config"]["rounds"])
    jobs = json.loads((RESULTS / "compare_jobs_cpu.json").read_text())
    step = json.loads((RESULTS / "train_step_cpu.json").read_text())
    jobs_speedup = jobs["measured"]["speedup"]
    step_speedup = step["table1_estimate"]["speedup"]
    floor_hours = step["hardware"]["table1"]["hours_at_matmul_rate"]

    rows = {}
    for label, entry in comparison["variants"].items():
        folder = run / entry["folder"]
        if (folder / "metrics.csv").is_file():
            rows[label] = row_seconds(folder, rounds)
    serial = sum(row["hours_at_median_round"] for row in rows.values())
    estimates = {
        "one process": serial,
        f"--jobs {jobs['usable_cores']}": serial / jobs_speedup,
        f"--jobs {jobs['usable_cores']}, channels_last": serial / jobs_speedup / step_speedup,
        "floor: local training at the matmul rate on every core": floor_hours,
    }
    result = {"cpu": device_name("cpu"), "run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
              "rounds": rounds, "rows": rows, "jobs_speedup": jobs_speedup, "channels_last_speedup": step_speedup,
              "hours": estimates, "target_hours": args.target_hours}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(result, indent=2) + "\n")

    lines = [f"# Wall time of the Table I preset ({result['cpu']})", "",
             f"From the rows in `{result['run']}`: each row's rounds (training and scoring) as it ran, a one-thread "
             f"process sharing the 2-core machine with one to three other runs, so a row alone on a core runs "
             f"faster than its median here.", "",
             "| row | rounds | median s/round | median round x rounds (h) |", "|---|---:|---:|---:|"]
    for label, row in rows.items():
        partial = "" if row["rounds_done"] >= rounds else " (partial)"
        lines.append(f"| {label} | {row['rounds_done']} of {rounds}{partial} | {row['median_round_s']:.0f} | "
                     f"{row['hours_at_median_round']:.2f} |")
    lines += ["", f"| the preset (all rows) | hours | under {args.target_hours:g} h? |", "|---|---:|---|"]
    lines += [f"| {name} | {hours:.2f} | {'yes' if hours < args.target_hours else 'no'} |"
              for name, hours in estimates.items()]
    lines += ["", f"`--jobs` speed-up {jobs_speedup:.2f}x (bench/results/compare_jobs_cpu.md, idle machine); "
              f"channels_last speed-up of the local training {step_speedup:.2f}x "
              f"(bench/results/train_step_cpu.md); the floor is that file's hardware section. The first three rows "
              f"are measured row times divided by measured ratios, not a run of the whole preset.", "",
              f"`python bench/table1_wall.py --run {result['run']}`", ""]
    write_atomic(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
