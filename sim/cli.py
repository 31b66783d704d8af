"""Command line: `leadfl-sim` or `python -m sim`.

    leadfl-sim run     [--preset NAME] [--config FILE] [--set KEY=VALUE ...] [--out DIR] [--resume]
    leadfl-sim run     --out DIR --resume [--rounds N]     (the settings from DIR/config.yaml)
    leadfl-sim compare [--preset NAME] [--config FILE] [--set KEY=VALUE ...] [--out DIR] [--resume]
                       [--seeds 0-4] [--jobs N]
    leadfl-sim sweep   --grid FILE|NAME --out DIR [--jobs N | --ray auto|ADDRESS] [--resume] [--dry-run]
    leadfl-sim sweep   --report DIR [--metric NAME ...] [--axis NAME] [--rows NAME] [--panels NAME]
                     [--reference AXIS=LEVEL]
    leadfl-sim plot DIR
    leadfl-sim list-presets

`--set` takes any setting by its dotted path (`client_defense.alpha=0.3`); `--seed`, `--device`
and `--rounds` are shortcuts for the three most common ones and win over `--set`.
On a CPU, torch runs with one thread unless `--threads N` says otherwise: the simulator's models are
small, so a second thread gains little, and on a machine busy with other work threads that wait on
each other cost a great deal (the demo on a loaded 2-core machine: 41-128 s per round with torch's
default of 2 threads, 3.6 s with 1). `compare` uses the cores by running several runs at once
(`--jobs`, default: the cores this process may use), each a one-thread process.
A bad setting prints one line naming it, the allowed values and the fix, and exits with status 2.

Each command imports what it needs when it runs, so `--help` and `list-presets` answer without
loading torch; no module of `sim` imports this one, so these imports hide no cycle.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sim.errors import ConfigError

EXAMPLES = """examples:
  leadfl-sim list-presets
  leadfl-sim compare --preset demo
  leadfl-sim compare --preset demo --seeds 0-4 --out runs/demo-5-seeds
  leadfl-sim run --preset table1-fmnist --set client_defense.type=leadfl --out runs/leadfl
  leadfl-sim run --out runs/leadfl --resume
  leadfl-sim plot runs/leadfl
  leadfl-sim sweep --grid poisoning-small --out runs/sweep --dry-run
  leadfl-sim sweep --grid poisoning-small --out runs/sweep --jobs 2
"""

EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", metavar="NAME", help="a preset from configs/ (see list-presets)")
    parser.add_argument("--config", metavar="FILE", help="a YAML file of settings, applied after the preset")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="one setting, e.g. --set client_defense.type=leadfl (repeatable; applied last)",
    )
    parser.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    parser.add_argument("--device", help="shortcut for --set device=cpu|cuda|cuda:N")
    parser.add_argument("--rounds", type=int, help="shortcut for --set rounds=N")
    parser.add_argument(
        "--engine",
        help="shortcut for --set engine=sequential|batched|auto (auto: the fastest for the device; "
        "under torchrun every rank trains its share of each round with it)",
    )
    parser.add_argument(
        "--client-chunk",
        dest="client_chunk",
        type=int,
        metavar="N",
        help="shortcut for --set client_chunk=N: most clients the batched engine stacks at once (default: from free memory)",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/<preset>-<timestamp>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the stopped run (or comparison) in --out from its checkpoint; "
        "run: without --preset/--config the settings come from the folder's config.yaml"
    )
    parser.add_argument(
        "--allow-machine-change",
        action="store_true",
        help="with --resume: continue although torch's version, thread count or the CPU/GPU model differ from "
        "the run's start (the results then differ from an uninterrupted run)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (default on a CPU: 1, the fastest for these small models on a busy machine; "
        "on a GPU: torch's choice)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leadfl-sim",
        description="Federated-learning poisoning simulator with the LeadFL client defense.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser("run", help="one experiment: metrics.csv, summary.json, accuracy.png")
    _add_config_arguments(run_parser)
    compare_parser = commands.add_parser(
        "compare", help="the variants in the config's compare: section, on identical selections, as one table"
    )
    _add_config_arguments(compare_parser)
    compare_parser.add_argument(
        "--seeds", metavar="LIST", help="run every variant for each seed: 0-4, 0,2,5 or 0-2,7 (default: the preset's "
        "seeds: key, else --seed); the table shows means and 95%% intervals over the seeds"
    )
    compare_parser.add_argument(
        "--jobs", type=int, metavar="N", help="runs at once, each a one-thread process (default on a CPU: the usable "
        "cores; on a GPU or under torchrun: 1, in this process)"
    )
    plot_parser = commands.add_parser("plot", help="redraw the plots of a run or comparison folder")
    plot_parser.add_argument("folder", metavar="DIR")
    plot_parser.add_argument(
        "--frontier", metavar="KEY", help="of a comparison over seeds: main-accuracy cost against mean backdoor "
        "accuracy, one line per family of variants along the setting KEY, e.g. client_defense.alpha "
        "(writes frontier.md and frontier.png)"
    )
    plot_parser.add_argument("--baseline", metavar="LABEL", help="with --frontier: the variant the cost is measured "
                             "against (default: the comparison's first variant)")
    commands.add_parser("list-presets", help="the presets in configs/ with their descriptions")
    _add_sweep_parser(commands)
    return parser


def _add_sweep_parser(commands) -> None:
    sweep = commands.add_parser("sweep", help="every combination of a grid's axes as runs, locally or on Ray; "
                                "a CSV, a table over seeds and plots (see sim.sweep)")
    sweep.add_argument("--grid", metavar="FILE|NAME", help="a grid file, or a preset grid in configs/grids/")
    sweep.add_argument("--out", metavar="DIR", help="the sweep folder (a run folder per trial under trials/)")
    sweep.add_argument("--resume", action="store_true", help="skip finished trials, continue stopped ones")
    sweep.add_argument("--dry-run", action="store_true", help="list the trials and an estimated cost; run nothing")
    sweep.add_argument("--jobs", type=int, default=1, metavar="N", help="trials at once as local processes, "
                       "one thread each (default 1)")
    sweep.add_argument("--ray", metavar="auto|ADDRESS", help="run each trial as a Ray task on a running cluster")
    sweep.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="F", help="GPU share per Ray task")
    sweep.add_argument("--report", metavar="DIR", help="rebuild the CSV, table and plots of a sweep folder")
    sweep.add_argument("--metric", action="append", metavar="NAME", help="metric to plot (repeatable)")
    sweep.add_argument("--axis", metavar="NAME", help="the axis the plots put on x (and the heatmaps' columns)")
    sweep.add_argument("--rows", metavar="NAME", help="the axis of the heatmaps' rows (grids of two or more axes "
                       "besides seed)")
    sweep.add_argument("--panels", metavar="NAME", help="the axis whose levels make the heatmaps' first panels")
    sweep.add_argument("--reference", metavar="AXIS=LEVEL", help="the level a `<figure>_drop` metric is measured "
                       "from, paired on the other axes and the seed (e.g. attack=none)")
    sweep.add_argument("--max-trials", type=int, default=10_000, metavar="N",
                       help="refuse a grid of more trials than this before building any (default 10000)")


def _command_sweep(args: argparse.Namespace) -> int:
    from sim.jobs import make_backend
    from sim.sweep import dry_run, expand, load_grid, sweep, write_report

    if args.report:
        reference = None
        if args.reference is not None:
            axis, equals, level = args.reference.partition("=")
            if not equals or not axis or not level:
                raise ConfigError(f"--reference {args.reference!r} must be AXIS=LEVEL; fix: --reference attack=none")
            reference = {axis: level}
        write_report(Path(args.report), args.metric, args.axis, rows=args.rows, panels=args.panels,
                     reference=reference)
        return 0
    if not args.grid:
        raise ConfigError("sweep needs --grid FILE (or --report DIR); fix: e.g. --grid poisoning-small --out runs/sweep")
    grid = load_grid(args.grid)
    if args.metric or args.axis or args.rows or args.panels or args.reference:
        raise ConfigError("--metric, --axis, --rows, --panels and --reference choose the plots of --report DIR; "
                          "fix: set them "
                          "in the grid's "
                          "report: section, or run --report DIR after the sweep")
    if args.max_trials < 1:
        raise ConfigError(f"--max-trials {args.max_trials} must be at least 1; fix: --max-trials 10000")
    trials = expand(grid, args.max_trials)
    if args.dry_run:
        dry_run(grid, trials, Path(args.out) if args.out else None, parallel=max(1, args.jobs))
        return 0
    if not args.out:
        raise ConfigError("sweep needs --out DIR for its trials; fix: e.g. --out runs/sweep")
    backend = make_backend(args.jobs, args.ray, args.gpus_per_trial)
    counts = sweep(grid, args.out, backend, resume=args.resume, trials=trials)
    return 1 if counts["failed"] else 0


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    for name in ("seed", "device", "rounds", "engine", "client_chunk"):
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"{name}={value}")
    return overrides


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out:
        out_dir = Path(args.out)
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"--out {out_dir} is a file, not a folder; fix: choose another --out")
        return out_dir
    if args.resume:
        raise ConfigError("--resume needs the folder of the stopped run; fix: add --out DIR")
    if args.preset:
        name = args.preset
    elif args.config:
        name = Path(args.config).stem
    else:
        name = args.command
    out_dir = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out = str(out_dir)  # so an interrupted run can say where to resume
    return out_dir


def _set_threads(args: argparse.Namespace, device: str) -> None:
    """--threads, or one thread on a CPU (see the module's docstring)."""
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be at least 1; fix: --threads 1")
    threads = args.threads if args.threads is not None else (1 if device == "cpu" else None)
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def _run_config(args: argparse.Namespace, out_dir: Path):
    """The config of `run`: from --preset/--config/--set; with --resume and neither --preset nor
    --config, the run folder's own config.yaml with the --set values on top (a value that differs
    from the saved one, other than more rounds, is then refused by the resume)."""
    from sim.config import apply_overrides, load_config
    from sim.io import CONFIG_FILE
    from sim.resume import load_run_config

    if args.resume and args.preset is None and args.config is None and (out_dir / CONFIG_FILE).is_file():
        return apply_overrides(load_run_config(out_dir), _overrides(args))
    return load_config(args.preset, args.config, _overrides(args))


def _command_run(args: argparse.Namespace) -> int:
    from sim.io import ATTACK_EFFECT_PLOT_FILE, PLOT_FILE
    from sim.reporting import format_summary
    from sim.runner import run

    out_dir = _out_dir(args)
    cfg = _run_config(args, out_dir)
    _set_threads(args, cfg.device)
    summary = run(cfg, out_dir, resume=args.resume, progress=not args.no_progress,
                  allow_machine_change=args.allow_machine_change)
    if _is_main_process():
        print(format_summary(summary))
        print(f"results: {out_dir}")
        print(f"plot: {out_dir / PLOT_FILE}")
        if cfg.metrics.attack_effect:
            print(f"plot: {out_dir / ATTACK_EFFECT_PLOT_FILE}")
    return 0


def _is_main_process() -> bool:
    # Under torchrun only rank 0 prints (sim.engines.distributed).
    from sim.engines.distributed import is_main_process

    return is_main_process()


def _compare_jobs(args: argparse.Namespace, device: str) -> int:
    """--jobs, or its default: the usable cores on a CPU; 1 on a GPU or under torchrun."""
    from sim.engines.distributed import launched_with_several_ranks
    from sim.jobs import usable_cores

    if args.jobs is None:
        return usable_cores() if device == "cpu" and not launched_with_several_ranks() else 1
    if args.jobs > 1 and args.threads not in (None, 1):
        raise ConfigError(
            f"--threads {args.threads} sets the threads of runs in this process, but --jobs {args.jobs} runs each "
            "as a one-thread process; fix: drop --threads, or add --jobs 1"
        )
    return args.jobs


def _command_compare(args: argparse.Namespace) -> int:
    from sim.compare import INPUT_FILE, PLOT_FILE, TABLE_FILE, TrialsFailed, compare
    from sim.config import compare_seeds, compare_variants, load_config, parse_seeds

    if args.resume and args.preset is None and args.config is None and args.out:
        # Continue the comparison in --out from its own record of settings, variants and seeds.
        saved = Path(args.out) / INPUT_FILE
        if not saved.is_file():
            raise ConfigError(
                f"--resume without --preset or --config reads {saved}, which does not exist; fix: give the "
                "--preset/--config the comparison was started with"
            )
        args.config = str(saved)
    cfg = load_config(args.preset, args.config, _overrides(args))
    variants = compare_variants(args.preset, args.config)
    if args.seeds is not None and args.seed is not None:
        raise ConfigError(
            f"--seed {args.seed} and --seeds {args.seeds} both choose the seed; fix: drop one of them"
        )
    # --seeds, else one --seed (which wins over a preset's seeds:), else the preset's seeds:.
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds)
    else:
        seeds = None if args.seed is not None else compare_seeds(args.preset, args.config)
    jobs = _compare_jobs(args, cfg.device)
    _set_threads(args, cfg.device)
    if not variants:
        source = f"preset '{args.preset}'" if args.preset else (f"'{args.config}'" if args.config else "the defaults")
        raise ConfigError(
            f"{source} has no compare: section, so there is nothing to compare; fix: use a preset with one "
            "(see list-presets, e.g. --preset table1-fmnist) or add a compare: section to a --config file"
        )
    out_dir = _out_dir(args)
    main_process = _is_main_process()
    try:
        compare(cfg, variants, out_dir, resume=args.resume, progress=not args.no_progress,
                echo=print if main_process else (lambda _text: None), allow_machine_change=args.allow_machine_change,
                seeds=seeds, jobs=jobs)
    except TrialsFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if main_process:
        print(f"table: {out_dir / TABLE_FILE}")
        print(f"plot: {out_dir / PLOT_FILE}")
    return 0


def _command_plot(args: argparse.Namespace) -> int:
    from sim.io import FolderLock

    folder = Path(args.folder)
    if args.baseline is not None and args.frontier is None:
        raise ConfigError("--baseline chooses the reference of a frontier; fix: add --frontier KEY, or drop --baseline")
    if not folder.is_dir():
        raise ConfigError(f"{folder} holds neither comparison.json nor metrics.csv (it is not a folder); fix: point "
                          "at a run or comparison folder")
    with FolderLock(folder, "run or comparison"):  # no run or comparison is writing it meanwhile
        return _plot_locked(args, folder)


def _plot_locked(args: argparse.Namespace, folder: Path) -> int:
    from sim import compare, reporting
    from sim.compare import JSON_FILE
    from sim.io import METRICS_FILE

    if args.frontier is not None:
        from sim.frontier import write_frontier

        for path in write_frontier(folder, compare.read_comparison(folder), args.frontier, args.baseline):
            print(f"{'table' if path.suffix == '.md' else 'plot'}: {path}")
        return 0
    if (folder / JSON_FILE).is_file():
        paths = []
        for label, entry in compare.read_comparison(folder)["variants"].items():
            # one folder per variant, or one per variant and seed (compare --seeds)
            run_folders = [run["folder"] for run in entry.get("runs", {}).values()] or [entry["folder"]]
            for run_folder in run_folders:
                if (folder / run_folder / METRICS_FILE).is_file():
                    paths += reporting.replot(folder / run_folder, label)
        paths.append(compare.replot(folder))
    elif (folder / METRICS_FILE).is_file():
        paths = reporting.replot(folder)
    else:
        raise ConfigError(
            f"{folder} holds neither {JSON_FILE} nor {METRICS_FILE}; fix: point at a run or comparison folder"
        )
    for path in paths:
        print(f"plot: {path}")
    return 0


def _command_list_presets(args: argparse.Namespace) -> int:
    from sim.presets import CONFIGS_DIR, list_presets

    presets = list_presets()
    if not presets:
        print(f"no presets in {CONFIGS_DIR}")
        return 0
    width = max(len(name) for name, _ in presets)
    for name, description in presets:
        print(f"{name.ljust(width)}  {description}")
    return 0


COMMANDS = {
    "run": _command_run,
    "compare": _command_compare,
    "plot": _command_plot,
    "list-presets": _command_list_presets,
    "sweep": _command_sweep,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except OSError as error:
        # Disk full, a read-only or vanished folder, a name too long: one line naming the path.
        from sim.io import os_error_text

        print(f"error: {os_error_text(error)}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f"; continue with the same command plus --resume --out {out}" if out else ""
        print(f"\ninterrupted; finished rounds are saved{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if "torch" in sys.modules:
            from sim.engines.distributed import shutdown

            shutdown()  # leave the torchrun process group, if `run` joined one
