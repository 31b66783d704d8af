"""ByzFL's aggregators as an oracle, run inside the environment of bench/byzfl_venv.sh.

    python bench/byzfl_oracle.py --check                 # ByzFL and torch versions, as JSON
    python bench/byzfl_oracle.py CASES.pt RESULTS.pt     # one ByzFL result per case

CASES.pt is a `torch.save`d list of dicts, each {"rule": ..., "x": [n, d] float32, ...}:

* "geometric_median": byzfl.GeometricMedian(nu, T)(x)
* "centered_clipping": byzfl.CenteredClipping(tau=tau, L=L) with its center m set to "center"
  (None: ByzFL's own start, zeros), called on x
* "clipping_mean": byzfl.Average()(byzfl.Clipping(c)(x)), the clipped rows' mean
* "ipm": byzfl.attacks.InnerProductManipulation(tau)(x), x the honest rows

RESULTS.pt is the list of ByzFL's outputs, one [d] tensor per case, in order.

`import byzfl` also loads ByzFL's training framework (torchvision, matplotlib, seaborn), which
the aggregators do not use; this script loads `byzfl.aggregators` without running the
package's top-level __init__, so its aggregator files run unchanged with numpy, scipy and torch
alone. It imports nothing from this project: the environment holds no `sim`.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import sys
import types


def byzfl_aggregators():
    spec = importlib.util.find_spec("byzfl")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("byzfl is not installed in this environment; run bench/byzfl_venv.sh")
    package = types.ModuleType("byzfl")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    sys.modules["byzfl"] = package
    return importlib.import_module("byzfl.aggregators")


def run(case: dict, aggregators):
    x = case["x"]
    rule = case["rule"]
    if rule == "geometric_median":
        return aggregators.GeometricMedian(nu=float(case["nu"]), T=int(case["T"]))(x)
    if rule == "centered_clipping":
        aggregator = aggregators.CenteredClipping(tau=float(case["tau"]), L=int(case["L"]))
        # ByzFL's constructor refuses every m (its type check asks for an array and a tensor at
        # once), so the center is set as the attribute its __call__ reads.
        if case.get("center") is not None:
            aggregator.m = case["center"]
        return aggregator(x)
    if rule == "clipping_mean":
        return aggregators.Average()(aggregators.Clipping(c=float(case["c"]))(x.clone()))
    if rule == "ipm":
        # byzfl.attacks imports only byzfl.aggregators and byzfl.utils, loaded as above.
        attacks = importlib.import_module("byzfl.attacks")
        return attacks.InnerProductManipulation(tau=float(case["tau"]))(x)
    raise ValueError(f"unknown rule {rule!r}")


def main(argv: list[str]) -> int:
    aggregators = byzfl_aggregators()
    import torch

    if argv == ["--check"]:
        print(json.dumps({"byzfl": importlib.metadata.version("byzfl"), "torch": torch.__version__}))
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    cases = torch.load(argv[0], weights_only=True)
    results = [run(case, aggregators) for case in cases]
    torch.save(results, argv[1])
    print(json.dumps({"byzfl": importlib.metadata.version("byzfl"), "cases": len(results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
