"""Per-step cost of the simulator's local training against a bare PyTorch loop.

Both train the FashionMNIST CNN on batches of 16 gathered by index from tensors of FashionMNIST
shape (synthetic values: the cost does not depend on them), with SGD(lr 0.01, momentum 0.1).
The bare loop is `zero_grad / forward / cross_entropy / backward / optimizer.step()`; the
simulator runs one client's local training (`SequentialEngine.train_clients` on one client) for the same number of steps,
for each client role. Blocks of steps are timed alternately and the medians compared, so load
on the machine hits every loop alike.

A second table times the bare step (forward, backward, SGD step) in other execution modes against
the eager step with contiguous tensors, interleaved in the same way: `channels_last` (model and
images in NHWC memory format), `channels_last input` (only the images; the weights stay
contiguous, as the simulator's flat parameter vectors and the leadfl_ext ops need), `channels_last
weight copies` (contiguous parameters, NHWC copies of the conv weights made in every forward pass),
`torch.compile` and `torch.compile` of the channels_last model. Each mode's
losses over the first block are checked against eager's (float tolerance), so a mode that changes
the maths would show.

    python bench/train_step.py [--steps 60] [--repeats 7] [--threads 1] [--no-compile]
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
from bench.common import device_name  # noqa: E402

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


def interleaved(loops, repeats, steps):
    """Seconds per step of each loop: one warm-up, then `repeats` rounds of one block per loop."""
    times = {name: [] for name in loops}
    for fn in loops.values():
        fn()  # warm up (and compile)
    for _ in range(repeats):
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def step_modes(dataset, samples, args):
    """The bare step (zero_grad, forward, cross_entropy, backward, SGD step) per execution mode,
    each from the same initial model on the same batches; ms/step and the speed-up over eager."""
    import copy

    template = build_model("fmnist_cnn", (1, 28, 28), 10)
    channels_last = torch.channels_last
    # (model's parameters in channels_last, images in channels_last, torch.compile, contiguous
    # parameters with channels_last copies of the conv weights made in each forward pass)
    modes = {"eager (contiguous)": (False, False, False, False), "channels_last": (True, True, False, False),
             "channels_last input": (False, True, False, False),
             "channels_last weight copies": (False, True, False, True)}
    if not args.no_compile:
        modes.update({"torch.compile": (False, False, True, False),
                      "torch.compile + channels_last": (True, True, True, False)})
    loops, losses = {}, {}
    for name, (model_cl, input_cl, compiled, weight_copies) in modes.items():
        model = copy.deepcopy(template)
        if model_cl:
            model = model.to(memory_format=channels_last)
        memory_format = channels_last if input_cl else torch.contiguous_format
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.1)
        forward = torch.compile(model) if compiled else model
        if weight_copies:
            # What an engine that keeps contiguous parameters (the leadfl_ext ops need them) could do.
            def forward(images, model=model):
                params = {key: value.contiguous(memory_format=channels_last) if value.dim() == 4 else value
                          for key, value in model.named_parameters()}
                return torch.func.functional_call(model, params, (images,))
        generator = torch.Generator().manual_seed(0)
        losses[name] = []

        def block(memory_format=memory_format, optimizer=optimizer, forward=forward, generator=generator,
                  record=losses[name]):
            order = torch.randperm(samples, generator=generator)
            for step in range(args.steps):
                batch = order[step * 16:(step + 1) * 16]
                optimizer.zero_grad()
                images = dataset.train_x[batch].contiguous(memory_format=memory_format)
                loss = F.cross_entropy(forward(images), dataset.train_y[batch])
                loss.backward()
                optimizer.step()
                if len(record) < args.steps:
                    record.append(loss.item())

        loops[name] = block
    times = interleaved(loops, args.repeats, args.steps)
    eager = statistics.median(times["eager (contiguous)"])
    reference = torch.tensor(losses["eager (contiguous)"])
    return [{"mode": name, "ms_per_step": statistics.median(values) * 1e3,
             "speedup_vs_eager": eager / statistics.median(values),
             "max_loss_difference": float((torch.tensor(losses[name]) - reference).abs().max())}
            for name, values in times.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="local steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per loop")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile modes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_at_start = " ".join(f"{x:.1f}" for x in os.getloadavg())

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

    times = interleaved(loops, args.repeats, args.steps)
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
    modes = step_modes(dataset, samples, args)
    mode_lines = ["| mode | ms/step | x eager (speed-up) | max loss difference to eager, first block |",
                  "|---|---|---|---|"]
    mode_lines += [f"| {r['mode']} | {r['ms_per_step']:.2f} | {r['speedup_vs_eager']:.2f} | "
                   f"{r['max_loss_difference']:.2e} |" for r in modes]
    mode_table = "\n".join(mode_lines)
    result = {"device": "cpu", "cpu": device_name("cpu"), "threads": args.threads, "steps_per_block": args.steps,
              "repeats": args.repeats, "model": "fmnist_cnn", "batch_size": 16, "rows": rows, "modes": modes,
              "load_average_at_start": load_at_start}
    out = Path(args.out or Path(__file__).parent / "results" / "train_step_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    out.with_suffix(".md").write_text(
        f"# Local-training step vs a bare PyTorch loop (fmnist_cnn, batch 16, CPU, {args.threads} thread(s))\n\n"
        f"{device_name('cpu')}; load average at the start {load_at_start}.\n\n"
        f"{table}\n\nMedians of {args.repeats} alternating blocks of {args.steps} steps.\n\n"
        f"## The bare step in other execution modes\n\n{mode_table}\n\n"
        f"Speed-up: eager's median ms/step over the mode's, both from the same interleaved blocks.\n")
    print(table)
    print()
    print(mode_table)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
