"""Per-step cost of the simulator's local training against a bare PyTorch loop.

Both train the FashionMNIST CNN on batches of 16 gathered by index from tensors of FashionMNIST
shape (synthetic values: the cost does not depend on them), with SGD(lr 0.01, momentum 0.1).
The bare loop is `zero_grad / forward / cross_entropy / backward / optimizer.step()`; the
simulator runs one client's local training (`SequentialEngine.train_clients` on one client) for the same number of steps,
for each client role. Blocks of steps are timed alternately and the medians compared, so load
on the machine hits every loop alike.

A second table times the bare step (forward, backward, SGD step) in other execution modes against
the eager step with contiguous tensors, interleaved in the same way: `channels_last` (model and
images in NHWC memory format, what `training.memory_format: channels_last` does), `channels_last
input` (only the images; the weights stay contiguous), `channels_last weight copies` (contiguous
parameters, NHWC copies of the conv weights made in every forward pass), `torch.compile` and
`torch.compile` of the channels_last model. Each mode's losses over the first block are checked
against eager's (float tolerance), so a mode that changes the maths would show.

A third table times the simulator's own local training (`SequentialEngine.train_clients` on one
client) with `training.memory_format` contiguous against channels_last, per client role, in
interleaved blocks, with the largest difference between the two updates after one block. From
those per-step times it estimates (an estimate, not a run) the local training time of the Table I
preset (configs/table1-fmnist.yaml) in either layout, and it times the batched engine's vmapped
gradient call over 10 stacked clients with contiguous stacks against channels_last ones.

A last section puts the step against the hardware: the floating-point operations of one gradient
(forward and backward at batch 16, counted by `torch.utils.flop_counter.FlopCounterMode`:
convolutions and matrix products; BatchNorm, ReLU and max-pool are not counted), the rate a
512x512 float32 matrix product reaches on one thread (timed in the same interleaved blocks as the
step modes: the practical peak of a core), and from them the Table I preset's local training at
that peak on every core, and the per-core rate the preset needs to train in under two hours.

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
    "malicious, backdoor mgda": (["attack.type=backdoor", "attack.backdoor.blend=mgda"], True),
}
# Gradient evaluations per step, for the per-gradient column.
GRADIENTS_PER_STEP = {"benign, leadfl hessian": 2, "malicious, backdoor mgda": 2}
# The roles of the memory-format table: those the Table I preset trains.
MEMORY_FORMAT_ROLES = ("benign, no defense", "benign, ldp", "benign, flwbc", "benign, leadfl hessian",
                       "benign, leadfl original", "malicious, backdoor mgda")
MEMORY_FORMATS = ("contiguous", "channels_last")
# configs/table1-fmnist.yaml: its variants (the benign role each trains), and per round 10
# selected clients of 100 (25 malicious, so 2.5 malicious per round on average) training 10
# local epochs of ceil(600 / 16) = 38 steps, for 80 rounds.
TABLE1_VARIANTS = {"None": "benign, no defense", "LDP": "benign, ldp", "FL-WBC": "benign, flwbc",
                   "LeadFL hessian": "benign, leadfl hessian", "LeadFL original": "benign, leadfl original"}
TABLE1_ROUNDS, TABLE1_CLIENTS, TABLE1_MALICIOUS_SHARE, TABLE1_STEPS = 80, 10, 0.25, 10 * 38
# Local steps per round and variant: the benign clients' (the variant's role) and the MGDA attackers'.
TABLE1_BENIGN_STEPS = TABLE1_CLIENTS * (1 - TABLE1_MALICIOUS_SHARE) * TABLE1_STEPS
TABLE1_MALICIOUS_STEPS = TABLE1_CLIENTS * TABLE1_MALICIOUS_SHARE * TABLE1_STEPS
TABLE1_TARGET_HOURS = 2.0
MATMUL_SIZE = 512
MATMUL = "matmul 512x512 (hardware reference)"


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
            # The alternative to NHWC parameters: contiguous ones, NHWC copies made for each forward pass.
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
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)

    def matmuls():  # one product per "step"
        for _ in range(args.steps):
            torch.mm(a, b)

    loops[MATMUL] = matmuls
    times = interleaved(loops, args.repeats, args.steps)
    matmul_s = statistics.median(times.pop(MATMUL))
    eager = statistics.median(times["eager (contiguous)"])
    reference = torch.tensor(losses["eager (contiguous)"])
    gradient_flops = flops_per_gradient()
    rows = [{"mode": name, "ms_per_step": statistics.median(values) * 1e3,
             "speedup_vs_eager": eager / statistics.median(values),
             "gflops": gradient_flops / statistics.median(values) / 1e9,
             "max_loss_difference": float((torch.tensor(losses[name]) - reference).abs().max())}
            for name, values in times.items()]
    return rows, {"flops_per_gradient": gradient_flops, "matmul_gflops": 2 * MATMUL_SIZE**3 / matmul_s / 1e9}


def flops_per_gradient(batch: int = 16) -> int:
    """Floating-point operations of one forward and backward pass of fmnist_cnn at `batch`."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("fmnist_cnn", (1, 28, 28), 10)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return int(counter.get_total_flops())


def table1_hardware_limit(limits, modes, cores):
    """The Table I preset's local training against the hardware: its gradients and operations,
    hours at the matrix-product rate on `cores` cores, and the rate per core it needs to train in
    TABLE1_TARGET_HOURS (with perfect scaling over the cores)."""
    gradients = TABLE1_ROUNDS * sum(TABLE1_BENIGN_STEPS * GRADIENTS_PER_STEP.get(role, 1)
                                    + TABLE1_MALICIOUS_STEPS * GRADIENTS_PER_STEP["malicious, backdoor mgda"]
                                    for role in TABLE1_VARIANTS.values())
    flops = gradients * limits["flops_per_gradient"]
    peak = limits["matmul_gflops"] * 1e9
    needed = flops / (cores * TABLE1_TARGET_HOURS * 3600) / 1e9
    return {"gradients": gradients, "flops": flops, "cores": cores,
            "hours_at_matmul_rate": flops / (cores * peak) / 3600,
            "needed_gflops_per_core": needed, "needed_share_of_matmul": needed / limits["matmul_gflops"],
            "hours_per_mode": {r["mode"]: flops / (cores * r["gflops"] * 1e9) / 3600 for r in modes}}


def memory_formats(dataset, samples, start, base, args):
    """Every role's local training in both memory formats, interleaved; ms/step, the speed-up of
    channels_last, and the largest difference between the two layouts' updates."""
    indices = torch.arange(samples)
    loops, updates = {}, {}
    for role in MEMORY_FORMAT_ROLES:
        overrides, malicious = ROLES[role]
        for memory_format in MEMORY_FORMATS:
            cfg = load_config(overrides=[*base, *overrides, f"training.memory_format={memory_format}"])
            engine = SequentialEngine("fmnist_cnn", dataset, [indices, indices], [1] if malicious else [],
                                      cfg.training, cfg.attack, cfg.client_defense, seed=0, device="cpu")

            def block(engine=engine, key=(role, memory_format)):
                updates[key] = engine.train_clients(start, [1], 0)

            loops[(role, memory_format)] = block
    times = interleaved(loops, args.repeats, args.steps)
    rows = []
    for role in MEMORY_FORMAT_ROLES:
        ms = {fmt: statistics.median(times[(role, fmt)]) * 1e3 for fmt in MEMORY_FORMATS}
        rows.append({"role": role, "contiguous_ms_per_step": ms["contiguous"],
                     "channels_last_ms_per_step": ms["channels_last"],
                     "speedup": ms["contiguous"] / ms["channels_last"],
                     "max_update_difference": float((updates[(role, "channels_last")]
                                                     - updates[(role, "contiguous")]).abs().max())})
    return rows


def batched_memory_formats(dataset, args, clients=10):
    """The batched engine's gradient call (`vmap` over `clients` stacked rows, as
    sim.engines.batched) with contiguous stacks against stacks whose every client's conv weight
    and images are channels_last (memory order client, O, kh, kw, C): ms per call of one step."""
    from sim.engines.batched import _VmapGradients
    from sim.models import trainable_parameters

    model = build_model("fmnist_cnn", (1, 28, 28), 10, seed=0)
    named = trainable_parameters(model)
    gradients = _VmapGradients(model, [name for name, _ in named])

    def nhwc(t):  # [n, O, C, kh, kw] -> the same values, each row channels_last
        return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) if t.dim() == 5 else t

    rows = [param.detach().unsqueeze(0).repeat(clients, *([1] * param.dim())) for _, param in named]
    batch = torch.arange(clients * 16).reshape(clients, 16) % dataset.train_x.shape[0]
    x, y = dataset.train_x[batch], dataset.train_y[batch]
    inputs = {"contiguous": (rows, x), "channels_last": ([nhwc(row) for row in rows], nhwc(x))}
    loops = {}
    for name, (params, images) in inputs.items():
        def block(params=params, images=images):
            for _ in range(args.steps // 4):
                gradients.task(params, images, y)
        loops[name] = block
    times = interleaved(loops, args.repeats, args.steps // 4)
    ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    return {"clients": clients, "contiguous_ms_per_step": ms["contiguous"],
            "channels_last_ms_per_step": ms["channels_last"], "speedup": ms["contiguous"] / ms["channels_last"]}


def table1_estimate(rows):
    """Local training hours of the Table I preset per memory format, from the measured ms/step:
    per round and variant, 10 * 0.75 benign clients at the variant's role and 10 * 0.25 MGDA
    attackers, 380 steps each; 80 rounds; all five variants."""
    ms = {(r["role"], fmt): r[f"{fmt}_ms_per_step"] for r in rows for fmt in MEMORY_FORMATS}
    out = {}
    for fmt in MEMORY_FORMATS:
        per_variant = {name: TABLE1_ROUNDS * (TABLE1_BENIGN_STEPS * ms[(role, fmt)]
                                              + TABLE1_MALICIOUS_STEPS * ms[("malicious, backdoor mgda", fmt)]) / 3.6e6
                       for name, role in TABLE1_VARIANTS.items()}
        out[fmt] = {"hours_per_variant": per_variant, "hours_total": sum(per_variant.values())}
    out["speedup"] = out["contiguous"]["hours_total"] / out["channels_last"]["hours_total"]
    return out


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
    format_rows = memory_formats(dataset, samples, start, base, args)
    estimate = table1_estimate(format_rows)
    batched = batched_memory_formats(dataset, args)
    format_lines = ["| role | contiguous ms/step | channels_last ms/step | speed-up | max update difference |",
                    "|---|---|---|---|---|"]
    format_lines += [f"| {r['role']} | {r['contiguous_ms_per_step']:.2f} | {r['channels_last_ms_per_step']:.2f} | "
                     f"{r['speedup']:.2f} | {r['max_update_difference']:.1e} |" for r in format_rows]
    format_table = "\n".join(format_lines)
    estimate_lines = ["| variant | contiguous (h) | channels_last (h) |", "|---|---|---|"]
    estimate_lines += [f"| {name} | {estimate['contiguous']['hours_per_variant'][name]:.2f} | "
                       f"{estimate['channels_last']['hours_per_variant'][name]:.2f} |" for name in TABLE1_VARIANTS]
    estimate_lines.append(f"| all five | {estimate['contiguous']['hours_total']:.2f} | "
                          f"{estimate['channels_last']['hours_total']:.2f} |")
    estimate_table = "\n".join(estimate_lines)
    modes, limits = step_modes(dataset, samples, args)
    cores = len(os.sched_getaffinity(0))
    hardware = table1_hardware_limit(limits, modes, cores)
    matmul_rate = limits["matmul_gflops"]
    mode_lines = ["| mode | ms/step | x eager (speed-up) | GFLOP/s | share of the matmul rate | "
                  "max loss difference to eager, first block |", "|---|---|---|---|---|---|"]
    mode_lines += [f"| {r['mode']} | {r['ms_per_step']:.2f} | {r['speedup_vs_eager']:.2f} | {r['gflops']:.1f} | "
                   f"{r['gflops'] / matmul_rate:.0%} | {r['max_loss_difference']:.2e} |" for r in modes]
    mode_lines.append(f"| {MATMUL} | | | {matmul_rate:.1f} | 100% | |")
    mode_table = "\n".join(mode_lines)
    hardware_lines = ["| local training of the Table I preset at | hours, all cores busy |", "|---|---|"]
    hardware_lines.append(f"| the matmul rate (the practical peak) | {hardware['hours_at_matmul_rate']:.2f} |")
    hardware_lines += [f"| the rate of the step mode {name} | {hours:.2f} |"
                       for name, hours in hardware["hours_per_mode"].items()]
    hardware_table = "\n".join(hardware_lines)
    load_at_end = " ".join(f"{x:.1f}" for x in os.getloadavg())
    result = {"device": "cpu", "cpu": device_name("cpu"), "threads": args.threads, "steps_per_block": args.steps,
              "repeats": args.repeats, "model": "fmnist_cnn", "batch_size": 16, "rows": rows, "modes": modes,
              "hardware": {**limits, "table1": hardware},
              "memory_formats": format_rows, "table1_estimate": estimate, "batched_memory_formats": batched,
              "load_average_at_start": load_at_start, "load_average_at_end": load_at_end}
    out = Path(args.out or Path(__file__).parent / "results" / "train_step_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    out.with_suffix(".md").write_text(
        f"# Local-training step vs a bare PyTorch loop (fmnist_cnn, batch 16, CPU, {args.threads} thread(s))\n\n"
        f"{device_name('cpu')}; load average at the start {load_at_start}, at the end {load_at_end} (other work "
        f"shared the machine: absolute times vary, ratios come from interleaved blocks).\n\n"
        f"{table}\n\nMedians of {args.repeats} alternating blocks of {args.steps} steps.\n\n"
        f"## The bare step in other execution modes\n\n{mode_table}\n\n"
        f"Speed-up: eager's median ms/step over the mode's, both from the same interleaved blocks. GFLOP/s: "
        f"{limits['flops_per_gradient'] / 1e6:.0f} MFLOP per step (one gradient at batch 16: convolutions and "
        f"matrix products, counted by FlopCounterMode) over the mode's median time; the matmul row times "
        f"{MATMUL_SIZE}x{MATMUL_SIZE} float32 products in the same interleaved blocks.\n\n"
        f"### The Table I preset against the hardware\n\n"
        f"Its local training evaluates {hardware['gradients'] / 1e6:.2f} M gradients (80 rounds, five variants, "
        f"the roles below; LeadFL hessian and the attackers two per step), "
        f"{hardware['flops'] / 1e15:.2f} PFLOP. Spread perfectly over this machine's {cores} cores:\n\n"
        f"{hardware_table}\n\n"
        f"Training it in under {TABLE1_TARGET_HOURS:g} hours, before any evaluation, aggregation or Python "
        f"overhead, takes {hardware['needed_gflops_per_core']:.1f} GFLOP/s on each of the {cores} cores: "
        f"{hardware['needed_share_of_matmul']:.0%} of the rate a large matrix product reaches, from "
        f"convolutions with 1 and 16 input channels at batch 16, pooling and BatchNorm.\n\n"
        f"## The simulator's local training: training.memory_format contiguous vs channels_last\n\n"
        f"`SequentialEngine.train_clients` on one client, {args.steps} local steps per block, medians of "
        f"{args.repeats} interleaved blocks per loop.\n\n{format_table}\n\n"
        f"Speed-up: contiguous ms/step over channels_last ms/step. Max update difference: the largest element of "
        f"|update(channels_last) - update(contiguous)| after one block (float rounding; a ReLU or max-pool tie "
        f"that the two layouts' rounding puts on different sides makes it jump to about 1e-4; FL-WBC's noise mask, "
        f"which compares two gradients element by element, flips with them, each flip moving an element by lr "
        f"times its Laplace noise, 1e-3 and more). Both layouts train the same model: "
        f"tests/sim/test_memory_format.py checks them equal to 1e-10 in float64.\n\n"
        f"### Table I preset, estimated from these per-step times (not a run)\n\n"
        f"Local training only (no evaluation, aggregation or data loading), one thread, at this run's load: per "
        f"round and variant {TABLE1_CLIENTS * (1 - TABLE1_MALICIOUS_SHARE):g} benign clients (the variant's role) "
        f"and {TABLE1_CLIENTS * TABLE1_MALICIOUS_SHARE:g} MGDA attackers on average (25 of 100 clients are "
        f"malicious, 10 selected at random), {TABLE1_STEPS} steps each (10 local epochs of 38 batches of 16), "
        f"{TABLE1_ROUNDS} rounds; LeadFL hessian rows and attackers evaluate two gradients per step, which their "
        f"ms/step include.\n\n{estimate_table}\n\n"
        f"Estimated speed-up of the preset's local training with channels_last: **{estimate['speedup']:.2f}x**.\n\n"
        f"### The batched engine's gradient call\n\n"
        f"`vmap` of the gradient over {batched['clients']} stacked clients (what sim/engines/batched.py calls per "
        f"step), contiguous stacks against stacks in which every client's conv weights and images are "
        f"channels_last: {batched['contiguous_ms_per_step']:.1f} vs {batched['channels_last_ms_per_step']:.1f} ms "
        f"per call, a speed-up of {batched['speedup']:.2f}x: in the grouped convolutions vmap runs for the stack "
        f"the layout {'does not pay' if batched['speedup'] < 1.05 else 'pays'} on this CPU. The batched engine "
        f"refuses training.memory_format=channels_last (it is the GPU engine; no GPU was measured).\n\n"
        f"`python bench/train_step.py --threads {args.threads} --steps {args.steps} --repeats {args.repeats}"
        f"{' --no-compile' if args.no_compile else ''}`\n")
    print(table)
    print()
    print(mode_table)
    print()
    print(format_table)
    print()
    print(estimate_table)
    print(f"\nbatched gradient call, {batched['clients']} clients: "
          f"{batched['contiguous_ms_per_step']:.1f} ms contiguous, "
          f"{batched['channels_last_ms_per_step']:.1f} ms channels_last ({batched['speedup']:.2f}x)")
    print(f"\nwrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
