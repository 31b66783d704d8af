"""Client-training throughput of the simulator's engines, against a plain PyTorch loop.

For 10, 100 and 1000 clients per round it times one round of `Engine.train_clients` (every
selected client's local training, from the same global model) with the FashionMNIST CNN and
reports client local steps per second and peak memory, for

* `sequential`  one client after another, one model (sim/engines/sequential.py)
* `batched`     all clients stacked and vmapped, one fused LeadFL/SGD update (sim/engines/batched.py)
* `auto`        whatever `engine: auto` picks on the device
* `distributed` the round split over R processes under torchrun (gloo on CPU, NCCL on GPUs),
                each rank running `auto` (sim/engines/distributed.py)

and, as the baseline, a plain single-model PyTorch loop (`zero_grad / forward / cross_entropy /
backward / SGD.step` on batches of 16), measured in the same run.

Data is synthetic of FashionMNIST shape (1x28x28, 10 classes), 32 samples per client, batch 16,
SGD lr 0.01 with momentum 0.1, every client benign (the client defense is `--defense`, `none` by
default). Throughput: the plain loop and the single-process engines are built in one process,
warmed up, and timed round-robin for `--repeats` rounds (so load on the machine hits them alike);
the best round counts, the median is shown too. The distributed engine is timed the same way in
its own torchrun job. Peak memory: every engine once more in a fresh process of its own, one
round: on CPU the peak resident set minus the process's footprint before training (data, model,
imports), summed over ranks; on a GPU `torch.cuda.max_memory_allocated`.

    python bench/sim_throughput.py                 # CPU: 1 thread per process, 2 ranks
    python bench/sim_throughput.py --device cuda   # GPU: distributed over every visible GPU

Results go to bench/results/sim_throughput_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import device_name as bench_device_name  # noqa: E402

SAMPLES_PER_CLIENT = 32
BATCH_SIZE = 16
ENGINES = ("sequential", "batched", "auto", "distributed")
DEFAULT_STEPS = {"cpu": "10:8,100:2,1000:1", "cuda": "10:10,100:10,1000:10"}
BASELINE_STEPS = {"cpu": 60, "cuda": 500}
RESULT_PREFIX = "RESULT "


# ----------------------------------------------------------------------------------------------
# one case, in its own process


def _rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _case(spec: dict) -> None:
    """Runs in a fresh process: builds the engines in `spec["engines"]` on one dataset, warms
    each up, then times `repeats` rounds of each, round-robin, so load on the machine hits all
    alike. With one engine the process's peak memory is that engine's."""
    import torch
    import torch.nn.functional as F

    from sim.engines import distributed
    from sim.config import load_config
    from sim.data import make_synthetic_dataset, partition
    from sim.models import build_model, flatten_parameters
    from sim.engines.registry import build_engine, resolve_engine

    torch.set_num_threads(spec["threads"])
    device = distributed.init_from_env(torch.device(spec["device"]))
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)
        if distributed.is_active():
            torch.distributed.barrier()

    clients, steps = spec["clients"], spec["steps"]
    dataset = make_synthetic_dataset(max(clients, 1) * SAMPLES_PER_CLIENT, 100, device, seed=0)
    start = flatten_parameters(build_model("fmnist_cnn", dataset.image_shape, dataset.num_classes, seed=0)).to(device)

    def plain_loop():
        model = build_model("fmnist_cnn", dataset.image_shape, dataset.num_classes, seed=0).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.1)
        generator = torch.Generator(device=device).manual_seed(0)

        def train(_round):
            for _ in range(spec["baseline_steps"]):
                batch = torch.randint(0, dataset.train_x.shape[0], (BATCH_SIZE,), device=device, generator=generator)
                optimizer.zero_grad()
                F.cross_entropy(model(dataset.train_x[batch]), dataset.train_y[batch]).backward()
                optimizer.step()

        return {"engine": "plain loop", "resolved": "plain loop", "steps": spec["baseline_steps"],
                "client_steps": spec["baseline_steps"]}, train, train

    def simulator_engine(name):
        engine_setting = "auto" if name == "distributed" else name
        cfg = load_config(overrides=[
            "data.dataset=synthetic",
            "model=fmnist_cnn",
            f"device={spec['device']}",
            f"engine={engine_setting}",
            f"clients.num_clients={clients}",
            "clients.num_malicious=0",
            f"clients.clients_per_round={clients}",
            "attack.type=none",
            f"client_defense.type={spec['defense']}",
            "server.aggregator=fedavg",
            f"training.batch_size={BATCH_SIZE}",
            "training.lr=0.01",
            "training.momentum=0.1",
            f"training.local_steps={steps}",
        ])
        cfg.device = str(device)  # this rank's device under torchrun
        engine = build_engine(cfg, dataset, partition(dataset.train_y, clients, "iid", seed=0), [])
        chosen = resolve_engine(cfg)[0]
        info = {
            "engine": name,
            "resolved": f"{chosen} x {distributed.world_size()} ranks" if distributed.is_active() else chosen,
            "steps": steps,
            "client_steps": clients * steps,
        }
        if hasattr(engine, "chunk_size"):
            info["client_chunk"] = engine.chunk_size(clients)
        selected = list(range(clients))
        # The warm-up pays one-time costs (vmap's first call, cuDNN's algorithm choice): on a
        # GPU with a full round, on a CPU with a few clients.
        warm_clients = selected if cuda else selected[: min(clients, 8)]
        return info, (lambda _round: engine.train_clients(start, warm_clients, 0)), (
            lambda round_: engine.train_clients(start, selected, round_ + 1)
        )

    cases = [plain_loop() if name == "plain loop" else simulator_engine(name) for name in spec["engines"]]
    footprint = _rss_bytes()
    for _, warm_up, _ in cases:
        warm_up(0)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = [[] for _ in cases]
    for repeat in range(spec["repeats"]):
        for index, (_, _, train_round) in enumerate(cases):
            sync()
            started = time.perf_counter()
            train_round(repeat)
            sync()
            times[index].append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if cuda else max(_peak_rss_bytes() - footprint, 0)
    peaks = [peak]
    if distributed.is_active():
        peaks = [None] * distributed.world_size()
        torch.distributed.all_gather_object(peaks, peak)
    results = []
    for (info, _, _), measured in zip(cases, times):
        work = info["client_steps"]
        results.append({
            **info,
            "clients": clients if info["engine"] != "plain loop" else 1,
            "times_s": measured,
            "client_steps_per_s": work / min(measured),
            "client_steps_per_s_median": work / statistics.median(measured),
            # Only meaningful when the process held one engine.
            "peak_memory_mb": sum(peaks) / 2**20 if len(cases) == 1 else None,
            "peak_memory_per_rank_mb": [p / 2**20 for p in peaks] if len(cases) == 1 else None,
        })
    if distributed.is_main_process():
        print(RESULT_PREFIX + json.dumps(results), flush=True)
    distributed.shutdown()


# ----------------------------------------------------------------------------------------------
# the driver


def _run_case(spec: dict, ranks: int) -> list[dict]:
    script = [str(Path(__file__).resolve()), "--case", json.dumps(spec)]
    if spec["engines"] == ["distributed"]:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *script]
    else:
        command = [sys.executable, *script]
    environment = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    finished = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    for line in finished.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    last = ((finished.stderr or finished.stdout).strip().splitlines() or ["no output"])[-1]
    return [{"engine": name, "clients": spec["clients"], "steps": spec["steps"], "error": last} for name in spec["engines"]]


def _parse_steps(text: str) -> dict[int, int]:
    pairs = {}
    for item in text.split(","):
        clients, _, steps = item.partition(":")
        pairs[int(clients)] = int(steps)
    return pairs


def _fmt(value, digits=1):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| clients/round | engine | runs as | steps/client | client-steps/s (best) | median | x plain loop | x sequential | peak memory (MB) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['clients']} | {row['engine']} | failed: {row['error']} | {row['steps']} | | | | | |")
            continue
        clients = row.get("round_clients", row["clients"])
        runs_as = row["resolved"]
        if row.get("client_chunk") is not None:
            runs_as += f" (chunks of {row['client_chunk']})"
        lines.append(
            f"| {clients} | {row['engine']} | {runs_as} | {row['steps']} | {_fmt(row['client_steps_per_s'])} | "
            f"{_fmt(row['client_steps_per_s_median'])} | {_fmt(row.get('x_plain_loop'), 2)} | "
            f"{_fmt(row.get('x_sequential'), 2)} | {_fmt(row.get('peak_memory_mb'), 0)} |"
        )
    return lines


def _targets(rows: list[dict], device: str) -> list[str]:
    by = {(row.get("round_clients", row["clients"]), row["engine"]): row for row in rows if "error" not in row}
    lines = []
    if device == "cuda":
        batched, sequential = by.get((100, "batched")), by.get((100, "sequential"))
        if batched and sequential:
            ratio = batched["client_steps_per_s"] / sequential["client_steps_per_s"]
            lines.append(f"- {'met' if ratio >= 20 else 'MISSED'}: batched >= 20x sequential at 100 clients/round "
                         f"(measured {ratio:.1f}x)")
        handled = by.get((1000, "batched"))
        lines.append(f"- {'met' if handled else 'MISSED'}: batched handles 1000 clients/round"
                     + (f" ({handled['client_steps_per_s']:,.0f} client-steps/s, chunk {handled.get('client_chunk')})" if handled else ""))
    else:
        for clients in sorted({row.get("round_clients", row["clients"]) for row in rows}):
            auto = by.get((clients, "auto"))
            single = [by[(clients, name)] for name in ("sequential", "batched") if (clients, name) in by]
            if not auto or not single:
                continue
            best = max(single, key=lambda row: row["client_steps_per_s"])
            slower = 1 - auto["client_steps_per_s"] / best["client_steps_per_s"]
            lines.append(
                f"- {'met' if slower <= 0.10 else 'MISSED'}: {clients} clients/round: auto ({auto['resolved']}) within 10% "
                f"of the best single-process engine ({best['engine']}): "
                + (f"{slower * 100:.1f}% slower" if slower > 0 else f"{-slower * 100:.1f}% faster")
            )
        lines.append(
            "- not measured here: the GPU targets (batched >= 20x sequential at 100 clients/round, and 1000 "
            "clients/round handled) need `--device cuda`"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", help="local steps per client by clients per round, e.g. 10:4,100:2,1000:1")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {','.join(ENGINES)}")
    parser.add_argument("--ranks", type=int, help="processes for the distributed engine (default: 2 on CPU, all GPUs)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per engine, round-robin (the best counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--defense", default="none", help="client_defense.type of every client")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        _case(json.loads(args.case))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible; fix: run on a GPU machine or use --device cpu", file=sys.stderr)
        return 2
    steps = _parse_steps(args.steps or DEFAULT_STEPS[args.device])
    engines = [name for name in args.engines.split(",") if name]
    unknown = [name for name in engines if name not in ENGINES]
    if unknown:
        print(f"error: --engines {unknown[0]!r} is not one of {', '.join(ENGINES)}; fix: --engines sequential,batched", file=sys.stderr)
        return 2
    ranks = args.ranks or (torch.cuda.device_count() if args.device == "cuda" else 2)
    if args.repeats < 1:
        print(f"error: --repeats {args.repeats} must be at least 1; fix: --repeats 3", file=sys.stderr)
        return 2
    if ranks < 2 and "distributed" in engines:
        print(f"note: {ranks} rank(s) available, the distributed engine is skipped", file=sys.stderr)
        engines.remove("distributed")
    base = {"device": args.device, "threads": args.threads, "defense": args.defense,
            "baseline_steps": BASELINE_STEPS[args.device]}
    single = [name for name in engines if name != "distributed"]

    load_before = os.getloadavg()
    rows = []
    for clients, per_client in steps.items():
        size = {**base, "clients": clients, "steps": per_client}
        print(f"{clients} clients/round x {per_client} local steps", flush=True)
        # Memory: one process per engine, one timed round.
        memory = {}
        for name in ["plain loop", *single]:
            (result,) = _run_case({**size, "engines": [name], "repeats": 1}, ranks)
            memory[name] = result.get("peak_memory_mb")
            print(f"  {name}: peak memory {_fmt(memory[name], 0)} MB", flush=True)
        # Throughput: the plain loop and the single-process engines in one process, round-robin.
        timed = _run_case({**size, "engines": ["plain loop", *single], "repeats": args.repeats}, ranks)
        if "distributed" in engines:
            timed += _run_case({**size, "engines": ["distributed"], "repeats": args.repeats}, ranks)
        baseline = next((row for row in timed if row["engine"] == "plain loop" and "error" not in row), None)
        sequential = next((row for row in timed if row["engine"] == "sequential" and "error" not in row), None)
        for row in timed:
            row["round_clients"] = clients
            if row["engine"] in memory:
                row["peak_memory_mb"] = memory[row["engine"]]
            if "error" in row:
                print(f"  {row['engine']}: failed: {row['error']}", flush=True)
                continue
            if baseline:
                row["x_plain_loop"] = row["client_steps_per_s"] / baseline["client_steps_per_s"]
            if sequential:
                row["x_sequential"] = row["client_steps_per_s"] / sequential["client_steps_per_s"]
            print(f"  {row['engine']}: {row['client_steps_per_s']:,.1f} client-steps/s", flush=True)
        rows += timed

    load_after = os.getloadavg()
    device_name = bench_device_name(args.device)
    from sim.engines.registry import choose_engine

    auto_choice, auto_reason = choose_engine(args.device)
    what = (
        f"FashionMNIST CNN (29,034 parameters), synthetic 1x28x28 data, {SAMPLES_PER_CLIENT} samples per client, batch "
        f"{BATCH_SIZE}, SGD lr 0.01 momentum 0.1, client defense `{args.defense}`, no attack; local steps per client: "
        + ", ".join(f"{steps_} at {clients} clients/round" for clients, steps_ in steps.items())
        + f"; plain loop: {BASELINE_STEPS[args.device]} steps per timed block. {args.threads} torch thread(s) per process; "
        f"distributed = {ranks} processes under torchrun ({'NCCL' if args.device == 'cuda' else 'gloo'}), each running "
        f"`auto`. Best of {args.repeats} round-robin timed rounds after a warm-up; peak memory from one more round "
        "per engine in a process of its own."
    )
    table = _table(rows)
    targets = _targets(rows, args.device)
    header = f"# Simulator throughput on {device_name} (torch {torch.__version__})"
    note = (
        "`auto` chooses within one process; the distributed rows use several processes (here, cores), a choice made "
        "at launch with torchrun, so the auto target compares against sequential and batched."
    )
    load = (
        f"Load average (1 min) of the machine: {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end "
        f"({os.cpu_count()} cores); other work on the machine slows every row alike only roughly."
    )
    markdown = "\n".join(
        [header, "", what, "", load, "", *table, "", f"`engine: auto` on {args.device} picks `{auto_choice}`: {auto_reason}.", "",
         note, "", "Targets:", *targets, ""]
    )
    print()
    print("\n".join(table))
    print()
    print("\n".join(targets))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sim_throughput_{args.device}"
    payload = {
        "device": device_name,
        "torch": torch.__version__,
        "what": what,
        "threads_per_process": args.threads,
        "ranks": ranks,
        "repeats": args.repeats,
        "load_average_1min": {"start": load_before[0], "end": load_after[0]},
        "auto_choice": auto_choice,
        "rows": rows,
        "targets": targets,
    }
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
