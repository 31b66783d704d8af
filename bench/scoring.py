"""One scoring of the full FashionMNIST test set against its arithmetic floor, many times over.

A round's evaluation (`bench/round.py`'s "evaluation" part) on its own: `fmnist_cnn` scores the
10,000 clean test images and the 9,000 non-target ones with the 9-pixel trigger, at
`eval.batch_size` 1000, in one process on one thread. Short measurements repeated and
interleaved, so that a quiet moment of the shared machine is caught by each variant alike:

    scoring copy        `sim.metrics.Scorer` as a run uses it (leadfl_ext's fused BatchNorm-ReLU-
                        max-pool kernels where `sim.networks.exact_batch_norm_kernel()` holds)
    ATen BatchNorm      the same scoring copy with ATen's BatchNorm and the strided-view pooling
                        (`exact_batch_norm_kernel` forced off: the copy as it was before the kernels)
    plain model         `sim.metrics.score` with the model called as it is (the per-batch loop the
                        scoring copy must equal)

and, between them, the rate of a 512x512 float32 matrix product on one thread. The floor is the
scoring's floating-point operations (torch.utils.flop_counter) at the best such rate. Times are CPU
time of the process (`time.process_time`). All three give the same scores (checked every repeat).

    python bench/scoring.py                  # 10 repeats
    python bench/scoring.py --repeats 20

Results: bench/results/scoring_cpu.json and scoring_cpu.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "scoring_cpu"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} is not allowed; it must be >= 1")

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    from bench.common import device_name, matmul_rate
    from sim import networks
    from sim.attacks.data_poisoning import stamp_trigger
    from sim.data import load_dataset
    from sim.metrics import Scorer, TestSet, score
    from sim.models import build_model, flatten_parameters, load_flat_parameters_

    data = load_dataset("fashion_mnist", None)
    test_set = TestSet(data.test_x, data.test_y, target_label=8, stamp=lambda images: stamp_trigger(images, data.trigger_hi, data.trigger_lo),
                       batch_size=1000)
    model = build_model("fmnist_cnn", (1, 28, 28), 10, seed=0)
    params = flatten_parameters(model)
    kernel_on = networks.exact_batch_norm_kernel()
    original = networks.exact_batch_norm_kernel
    fused = Scorer(build_model("fmnist_cnn", (1, 28, 28), 10, seed=1), test_set)
    aten = Scorer(build_model("fmnist_cnn", (1, 28, 28), 10, seed=1), test_set)
    load_flat_parameters_(model, params)

    def plain():
        with torch.inference_mode():
            return score(model, test_set, margin=True)

    def run_aten():
        networks.exact_batch_norm_kernel = lambda: False
        try:
            return aten(params)
        finally:
            networks.exact_batch_norm_kernel = original

    variants = {"scoring copy": lambda: fused(params), "ATen BatchNorm": run_aten, "plain model": plain}
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        score(model, test_set)
    flops = counter.get_total_flops()

    times = {name: [] for name in variants}
    rates = [matmul_rate(20)]
    reference = None
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
            started = time.process_time()
            result = variants[name]()
            times[name].append(time.process_time() - started)
            scores = {key: result[key] for key in ("main_accuracy", "backdoor_accuracy", "test_loss")}
            if reference is None:
                reference = scores
            elif scores != reference:
                raise SystemExit(f"{name} scored {scores}, not {reference}: the variants must score alike")
        rates.append(matmul_rate(20))
        print(f"[{repeat + 1}/{args.repeats}] " + ", ".join(f"{name} {times[name][-1]:.3f} s" for name in variants)
              + f"; matmul {rates[-1] / 1e9:.1f} GFLOP/s", flush=True)

    rate = max(rates)
    floor = flops / rate
    result = {"device": device_name("cpu"), "torch": torch.__version__, "threads": 1, "repeats": args.repeats,
              "fused_kernel_used": kernel_on, "flops": flops, "matmul_512_gflops_best": rate / 1e9,
              "matmul_512_gflops_all": [r / 1e9 for r in rates], "floor_s": floor, "scores": reference,
              "times_s": times,
              "best_s": {name: min(values) for name, values in times.items()},
              "median_s": {name: statistics.median(values) for name, values in times.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# One scoring of the FashionMNIST test set against its arithmetic floor", "",
             f"`python bench/scoring.py --repeats {args.repeats}` on {result['device']}, torch {torch.__version__}, one "
             "thread, CPU time of the process. The machine is shared and noisy; the variants alternate within each "
             "repeat (order reversed every other repeat), so the best and the median of each are comparable. "
             f"leadfl_ext's fused kernels in use: {'yes' if kernel_on else 'no'}.", "",
             f"Floor: {flops / 1e9:.2f} GFLOP (torch.utils.flop_counter) / {rate / 1e9:.1f} GFLOP/s (the best 512x512 "
             f"matrix product rate of {len(rates)} probes between the repeats, all "
             + ", ".join(f"{r / 1e9:.1f}" for r in rates) + f") = {floor:.3f} s. Scores: {reference}.", "",
             "| variant | best (s) | median (s) | best / floor | median / floor | best: plain model / this |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in variants:
        best, median = result["best_s"][name], result["median_s"][name]
        lines.append(f"| {name} | {best:.3f} | {median:.3f} | {best / floor:.2f}x | {median / floor:.2f}x | "
                     f"{result['best_s']['plain model'] / best:.2f}x |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
