"""Per-step cost of the simulator's local training against a bare PyTorch loop.

Both train the FashionMNIST CNN on batches of 16 gathered by index from tensors of FashionMNIST
shape (synthetic values: the cost does not depend on them), with SGD(lr 0.01, momentum 0.1).
The bare loop is `zero_grad / forward / cross_entropy / backward / optimizer.step()`; the
simulator runs one client's local training (`SequentialEngine.train_clients` on one client) for the same number of steps,
for each client role. Blocks of steps are timed alternately and the medians compared, so load
on the machine hits every loop alike.

    python bench/train_step.py [--steps 60] [--repeats 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sim.config import load_config  # noqa: E402
from sim.data import make_synthetic_dataset  # noqa: E402
from sim.models import build_model, flatten_parameters  # noqa: E402
from sim.engines.sequential import SequentialEngine  # noqa: E402

ROLES = {
    "benign, no defense": (["client_defense.type=none"], False),
    "benign, ldp": (["client_defense.type=ldp"], False),
    "benign, flwbc": (["client_defense.type=flwbc"], False),
    "benign, leadfl hessian": (["client_defense.type=leadfl", "client_defense.variant=hessian"], False),
    "benign, leadfl paper": (["client_defense.type=leadfl", "client_defense.variant=paper"], False),
    "benign, leadfl original": (["client_defense.type=leadfl", "client_defense.variant=original"], False),
    "malicious, backdoor mgda": (["attack.type=backdoor", "attack.blend=mgda"], True),
}
# Gradient evaluations per step, for the per-gradient column.
GRADIENTS_PER_STEP = {"benign, leadfl hessian": 2, "malicious, backdoor mgda": 2}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="local steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per loop")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    samples = args.steps * 16
    dataset = make_synthetic_dataset(samples, 100, seed=0)
    indices = torch.arange(samples)
    base = ["data.dataset=synthetic", "training.batch_size=16", "training.lr=0.01", "training.momentum=0.1",
            f"training.local_steps={args.steps}"]

    model = build_model("fmnist_cnn", (1, 28, 28), 10)
    start = flatten_parameters(model).detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.1)
    gen = torch.Generator().manual_seed(0)

    def bare_block():
        order = torch.randperm(samples, generator=gen)
        for step in range(args.steps):
            batch = order[step * 16:(step + 1) * 16]
            optimizer.zero_grad()
            F.cross_entropy(model(dataset.train_x[batch]), dataset.train_y[batch]).backward()
            optimizer.step()

    loops = {"bare PyTorch loop": bare_block}
    for role, (overrides, malicious) in ROLES.items():
        cfg = load_config(overrides=[*base, *overrides])
        engine = SequentialEngine("fmnist_cnn", dataset, [indices, indices], [1] if malicious else [], cfg.training,
                                  cfg.attack, cfg.client_defense, seed=0, device="cpu")
        loops[role] = (lambda e=engine: e.train_clients(start, [1], 0))

    times = {name: [] for name in loops}
    for fn in loops.values():
        fn()  # warm up
    for _ in range(args.repeats):
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / args.steps)
    bare = statistics.median(times["bare PyTorch loop"])
    rows = []
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        grads = GRADIENTS_PER_STEP.get(name, 1)
        rows.append({"loop": name, "ms_per_step": ms, "ratio_to_bare": ms / (bare * 1e3),
                     "gradients_per_step": grads, "ratio_per_gradient": ms / grads / (bare * 1e3)})
    lines = ["| loop | ms/step | x bare | gradients/step | x bare per gradient |", "|---|---|---|---|---|"]
    lines += [f"| {r['loop']} | {r['ms_per_step']:.2f} | {r['ratio_to_bare']:.2f} | {r['gradients_per_step']} | "
              f"{r['ratio_per_gradient']:.2f} |" for r in rows]
    table = "\n".join(lines)
    result = {"device": "cpu", "threads": args.threads, "steps_per_block": args.steps, "repeats": args.repeats,
              "model": "fmnist_cnn", "batch_size": 16, "rows": rows}
    out = Path(args.out or Path(__file__).parent / "results" / "train_step_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    out.with_suffix(".md").write_text(
        f"# Local-training step vs a bare PyTorch loop (fmnist_cnn, batch 16, CPU, {args.threads} thread(s))\n\n"
        f"{table}\n\nMedians of {args.repeats} alternating blocks of {args.steps} steps.\n")
    print(table)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
