"""Step latency of the fused LeadFL update against its baselines.

For each parameter list (FashionMNIST CNN, CIFAR CNN, ResNet-18, one flat 64M tensor) it times
the fused op, the eager reference, a ``torch._foreach_*`` version and, where it compiles,
``torch.compile`` of the reference, plus a plain copy of the same number of elements, all
timed in turn in one loop (medians), so that load on a shared machine hits them alike. It reports
the median time, the effective bandwidth (16 bytes per fp32 element: read W, g, g~, write W) and
its ratio to the copy's bandwidth (8 bytes per element) measured in the same run.

    python bench/step_latency.py                 # CPU, all sizes
    python bench/step_latency.py --device cuda   # GPU, adds the kernel-launch count
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import leadfl_ext  # noqa: E402
from bench.common import device_name  # noqa: E402
from bench.shapes import CIFAR_CNN, FLAT_64M, FMNIST_CNN, RESNET18, numel  # noqa: E402
from leadfl_ext import reference  # noqa: E402

LR, ALPHA, Q = 0.01, 0.4, 0.2
SIZES = {"fmnist_cnn": FMNIST_CNN, "cifar_cnn": CIFAR_CNN, "resnet18": RESNET18, "flat_64m": FLAT_64M}


def foreach_step_(params, grads, lookahead, *, lr, alpha, q):
    """The same update with torch._foreach_* kernels: several passes, one launch per op."""
    r = torch._foreach_sub(lookahead, grads)
    torch._foreach_mul_(r, -1.0)
    torch._foreach_add_(r, 1.0)
    torch._foreach_clamp_min_(r, -q)
    torch._foreach_clamp_max_(r, q)
    torch._foreach_add_(params, grads, alpha=-lr)
    torch._foreach_add_(params, r, alpha=-lr * alpha)


def make_lists(shapes, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    return [[torch.randn(s, device=device, generator=gen) * 0.5 for s in shapes] for _ in range(3)]


class Timer:
    """Median time per call of several callables, timed in turn (interleaved), so that load on
    a shared machine falls on all of them alike."""

    def __init__(self, device):
        self.device = device

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _once(self, fn) -> float:
        if self.device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def medians(self, fns: dict, *, min_time=1.5, min_reps=7, max_reps=500) -> dict:
        for fn in fns.values():
            for _ in range(2):
                fn()
        self.sync()
        times = {name: [] for name in fns}
        start = time.perf_counter()
        while True:
            for name, fn in fns.items():
                times[name].append(self._once(fn))
            reps = len(next(iter(times.values())))
            if reps >= max_reps or (reps >= min_reps and time.perf_counter() - start >= min_time):
                break
        return {name: statistics.median(values) for name, values in times.items()}


def count_kernel_launches(fn) -> int:
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def bench_size(name, shapes, device, timer, use_compile):
    n = numel(shapes)
    p, g, gl = make_lists(shapes, device)
    row = {"size": name, "tensors": len(shapes), "elements": n}
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    impls = {
        "fused": lambda: leadfl_ext.fused_step_(p, g, gl, lr=LR, alpha=ALPHA, q=Q),
        "eager_reference": lambda: reference.fused_step_(p, g, gl, lr=LR, alpha=ALPHA, q=Q),
        "foreach": lambda: foreach_step_(p, g, gl, lr=LR, alpha=ALPHA, q=Q),
    }
    if use_compile:
        try:
            compiled = torch.compile(reference.fused_step_.__wrapped__, dynamic=False)
            compiled(p, g, gl, lr=LR, alpha=ALPHA, q=Q)
            impls["compiled_reference"] = lambda: compiled(p, g, gl, lr=LR, alpha=ALPHA, q=Q)
        except Exception as exc:  # report, do not hide: the table says why the column is empty
            row["compiled_reference_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    medians = timer.medians({"copy": lambda: dst.copy_(src), **impls})
    row["copy_gbps"] = 8 * n / medians["copy"] / 1e9
    for impl in impls:
        seconds = medians[impl]
        row[f"{impl}_us"] = seconds * 1e6
        row[f"{impl}_gbps"] = 16 * n / seconds / 1e9
    row["fused_vs_copy_bandwidth"] = row["fused_gbps"] / row["copy_gbps"]
    for impl in impls:
        if impl != "fused":
            row[f"speedup_vs_{impl}"] = row[f"{impl}_us"] / row["fused_us"]
    if device == "cuda":
        row["fused_kernel_launches"] = count_kernel_launches(impls["fused"])
    return row


def markdown(rows, device):
    impls = ["fused", "eager_reference", "foreach", "compiled_reference"]
    head = ["size", "tensors", "elements"] + [f"{i} us" for i in impls] + \
        ["fused GB/s", "copy GB/s", "fused/copy BW", "x eager", "x foreach", "x compiled"]
    if device == "cuda":
        head.append("launches")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def f(key, fmt="{:.1f}"):
            return fmt.format(r[key]) if key in r else "n/a"
        cells = [r["size"], str(r["tensors"]), f"{r['elements']:,}"] + [f(f"{i}_us") for i in impls] + \
            [f("fused_gbps"), f("copy_gbps"), f("fused_vs_copy_bandwidth", "{:.0%}"),
             f("speedup_vs_eager_reference", "{:.2f}x"), f("speedup_vs_foreach", "{:.2f}x"),
             f("speedup_vs_compiled_reference", "{:.2f}x")]
        if device == "cuda":
            cells.append(f("fused_kernel_launches", "{}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(rows, device):
    """The targets, read off the measured rows."""
    verdicts = []
    for r in rows:
        if device == "cpu" and r["elements"] >= 4_000_000:
            verdicts.append((f"{r['size']}: >= 2x eager reference", r["speedup_vs_eager_reference"] >= 2,
                             f"{r['speedup_vs_eager_reference']:.2f}x"))
            verdicts.append((f"{r['size']}: >= 60% of copy bandwidth", r["fused_vs_copy_bandwidth"] >= 0.6,
                             f"{r['fused_vs_copy_bandwidth']:.0%}"))
        if device == "cuda" and r["elements"] >= 16_000_000:
            verdicts.append((f"{r['size']}: >= 85% of copy bandwidth", r["fused_vs_copy_bandwidth"] >= 0.85,
                             f"{r['fused_vs_copy_bandwidth']:.0%}"))
            verdicts.append((f"{r['size']}: >= 3x eager reference", r["speedup_vs_eager_reference"] >= 3,
                             f"{r['speedup_vs_eager_reference']:.2f}x"))
        if device == "cuda" and r["size"] == "resnet18":
            verdicts.append(("resnet18: exactly one kernel launch", r.get("fused_kernel_launches") == 1,
                             str(r.get("fused_kernel_launches"))))
    return verdicts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/step_latency_<device>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not (torch.cuda.is_available() and leadfl_ext.cuda_available()):
        parser.error("--device cuda needs a GPU and a CUDA build of leadfl_ext (reinstall on a CUDA machine)")
    timer = Timer(args.device)
    rows = []
    for name in args.sizes:
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        rows.append(bench_size(name, SIZES[name], args.device, timer, not args.no_compile))
    table = markdown(rows, args.device)
    verdicts = check_targets(rows, args.device)
    result = {
        "device": f"{device_name(args.device)}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "cpu_kernel_isa": leadfl_ext.cpu_kernel_isa(),
        "dtype": "float32",
        "bytes_per_element": {"fused": 16, "copy": 8},
        "rows": rows,
        "targets": [{"target": t, "met": bool(ok), "measured": m} for t, ok, m in verdicts],
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"step_latency_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    md = out.with_suffix(".md")
    targets_md = "\n".join(f"- {'met' if ok else 'MISSED'}: {t} (measured {m})" for t, ok, m in verdicts)
    md.write_text(f"# Step latency on {result['device']} (torch {torch.__version__}, float32)\n\n{table}\n\n"
                  f"Targets:\n{targets_md}\n")
    print(f"\nDevice: {result['device']}\n\n{table}\n\nTargets:\n{targets_md}\n\nwrote {out} and {md}")


if __name__ == "__main__":
    main()
