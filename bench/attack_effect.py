"""What measuring the attack effect costs: the same run with `metrics.attack_effect` off and on.

The run is the `demo` preset (FashionMNIST CNN, 10 clients a round, 20 local steps each, the
first 1,000 test images scored) cut to a few rounds, with LeadFL as the client defense (the
defense whose effect the measurement exists to explain). With the attack effect on, each round
also trains every selected client again from the shadow model, aggregates those updates and
scores the shadow model (sim/attack_effect.py), so about 2x is expected.

Both settings run in this process, alternating (off, on, off, on, ...) for `--repeats` pairs so
load on the machine hits them alike; a run's time is the sum of its rounds' `wall_time_s` (the
round loop, without loading data). The ratio is on/off of the best run of each, the median too.

    python bench/attack_effect.py             # 1 torch thread, 3 rounds, 3 pairs

Results go to bench/results/attack_effect_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import device_name  # noqa: E402

SETTINGS = ("off", "on")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (off, on)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--defense", default="leadfl", help="client_defense.type")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from sim.config import load_config
    from sim.runner import run

    overrides = [f"rounds={args.rounds}", f"client_defense.type={args.defense}"]
    configs = {setting: load_config("demo", None, [*overrides, f"metrics.attack_effect={setting == 'on'}".lower()])
               for setting in SETTINGS}
    times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for setting in SETTINGS:
                summary = run(configs[setting], Path(scratch) / f"{setting}{repeat}", progress=False)
                times[setting].append(summary["wall_time_s"])
                print(f"{setting}: {summary['wall_time_s']:.2f} s for {args.rounds} rounds", file=sys.stderr, flush=True)
    load_end = os.getloadavg()[0]

    best = {setting: min(values) for setting, values in times.items()}
    median = {setting: statistics.median(values) for setting, values in times.items()}
    result = {
        "machine": device_name("cpu"),
        "torch": torch.__version__,
        "threads": args.threads,
        "preset": "demo",
        "overrides": overrides,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "run_seconds": times,
        "ratio_best": best["on"] / best["off"],
        "ratio_median": median["on"] / median["off"],
        "load_average_start_end": [load_start, load_end],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attack_effect_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {setting} | {best[setting]:.2f} | {median[setting]:.2f} | {best[setting] / args.rounds:.2f} |"
        for setting in SETTINGS
    )
    markdown = f"""# Attack-effect overhead on {result['machine']} (torch {result['torch']})

`demo` preset with {', '.join(f'`{o}`' for o in overrides)}, {args.threads} torch thread(s); {args.repeats} runs per
setting, alternating off/on in one process; a run's time is the sum of its rounds' `wall_time_s`.
Load average (1 min): {load_start:.1f} at the start, {load_end:.1f} at the end.

| metrics.attack_effect | best run (s) | median run (s) | best s/round |
|---|---:|---:|---:|
{rows}

**Overhead: {result['ratio_best']:.2f}x** (best on / best off; medians: {result['ratio_median']:.2f}x).
The shadow trains every selected client a second time, aggregates and scores a second model.

    python bench/attack_effect.py --rounds {args.rounds} --repeats {args.repeats} --threads {args.threads} --defense {args.defense}
"""
    (args.out / "attack_effect_cpu.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
