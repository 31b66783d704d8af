"""The `drift` variant's update (SGD plus -lr*alpha*q, docs/algorithms.md §1.5) two ways.

`drift` runs the fused op with g~ = g and the constant q (one pass: read W and g twice, write W).
The alternative is plain SGD plus a constant: two `torch._foreach_add_` passes. Both are timed
in turn in one loop (medians, `bench.step_latency.Timer`), with the `hessian` op on the same
tensors for reference; the ratio foreach / fused says which is faster on this machine.

    python bench/drift_step.py                 # CPU (one thread unless --threads)
    python bench/drift_step.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import leadfl_ext  # noqa: E402
from bench.common import device_name  # noqa: E402
from bench.shapes import CIFAR_CNN, FMNIST_CNN, RESNET18, numel  # noqa: E402
from bench.step_latency import ALPHA, LR, Q, Timer, make_lists  # noqa: E402

SIZES = {"fmnist_cnn": FMNIST_CNN, "cifar_cnn": CIFAR_CNN, "resnet18": RESNET18}


def foreach_drift_(params, grads, *, lr, alpha, q):
    torch._foreach_add_(params, grads, alpha=-lr)
    torch._foreach_add_(params, -lr * alpha * q)


def bench_size(name, shapes, device, timer):
    p, g, gl = make_lists(shapes, device)
    check = [x.clone() for x in p]
    leadfl_ext.fused_step_(check, g, g, lr=LR, alpha=ALPHA, q=Q, identity=Q)
    other = [x.clone() for x in p]
    foreach_drift_(other, g, lr=LR, alpha=ALPHA, q=Q)
    agree = max(float((a - b).abs().max()) for a, b in zip(check, other))
    medians = timer.medians({
        "drift_fused": lambda: leadfl_ext.fused_step_(p, g, g, lr=LR, alpha=ALPHA, q=Q, identity=Q),
        "drift_foreach": lambda: foreach_drift_(p, g, lr=LR, alpha=ALPHA, q=Q),
        "hessian_fused": lambda: leadfl_ext.fused_step_(p, g, gl, lr=LR, alpha=ALPHA, q=Q),
    })
    row = {"size": name, "tensors": len(shapes), "elements": numel(shapes), "max_abs_difference": agree}
    row.update({f"{k}_us": v * 1e6 for k, v in medians.items()})
    row["foreach_over_fused"] = medians["drift_foreach"] / medians["drift_fused"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/drift_step_<device>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    timer = Timer(args.device)
    rows = [bench_size(name, shapes, args.device, timer) for name, shapes in SIZES.items()]
    device = f"{device_name(args.device)}, {torch.get_num_threads()} threads"
    lines = ["| size | elements | drift fused (us) | drift foreach (us) | foreach / fused | hessian fused (us) | max diff |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['elements']:,} | {r['drift_fused_us']:.1f} | {r['drift_foreach_us']:.1f} | "
                     f"{r['foreach_over_fused']:.2f}x | {r['hessian_fused_us']:.1f} | {r['max_abs_difference']:.1e} |")
    table = "\n".join(lines)
    out = Path(args.out or Path(__file__).parent / "results" / f"drift_step_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "torch": torch.__version__, "dtype": "float32", "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(f"# drift update, fused op vs two foreach passes, on {device} "
                                      f"(torch {torch.__version__}, float32)\n\n{table}\n")
    print(f"Device: {device}\n\n{table}\n\nwrote {out}")


if __name__ == "__main__":
    main()
