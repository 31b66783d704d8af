"""Server aggregation rules at 10 / 100 / 1000 clients per round, against baselines in the same run.

For every rule of `sim.server.registry.AGGREGATORS` and every size `n x d` (updates of the FashionMNIST
CNN, 29,034 floats, and of ResNet-18, 11,689,512) it times one call on random float32 updates and
the baselines that do the same job another way, all timed in turn (interleaved) so load on a
shared machine hits them alike:

* Krum-family rules (krum, multikrum, bulyan, fltk_*): Krum scores from `torch.cdist` (squared,
  then a top-k per row and a sort, as ByzFL does) and from a numpy float32 Gram matrix;
* median: `np.median`, `np.partition`, `torch.median`;
* trimmed mean: `np.partition` and a full `torch.sort` of the columns, then the mean;
* fedavg, sparsefed, robust_dpfl: `np.mean` / `torch.mean` over the rows (sparsefed: plus top-k).
* norm_clipping, rlr, rfa, centered_clipping: the same maths written plainly in torch and in numpy,
  whole-matrix expressions with full [n, d] temporaries (as ByzFL and FLPoison write them); rfa's
  plain versions run the same algorithm (mean start, the same step count and stopping test).
  For these rules each row also records the rule's operation count, as reads of the [n, d]
  input (`passes`, the check for non-finite rows included), and the time of one read
  (`torch.sum` of each row, the fastest read measured) in the same run: `x pass bound` = passes * one read /
  rule time (1: as fast as that many reads).
* prodigy: a direct numpy version (Gram distances, a stable sort per row, each neighbourhood's
  mean and std formed from its rows as the authors' code does), and the numpy Gram Krum scores
  (the distance work every such rule shares);
* flame: numpy chunked cosine Gram of the models + scikit-learn HDBSCAN + clipping and noise, and
  scikit-learn's `cosine_distances` in place of the Gram below 1e8 elements;
* foolsgold: scikit-learn `cosine_similarity` (below 1e8 elements) or a numpy chunked Gram, then
  the pardoning and logit vectorised in numpy and the weighted sum;
* fltrust: numpy dot products with the server's update, ReLU, the rescaled weighted sum.
  For these four rules the operation count (below) adds to the passes the multiply-adds of their
  Gram matrix, priced at the float64 matrix-product rate measured in the same run.

The rules that read a context get one per call: the round's generator, the global model (random,
for flame's local models), client ids 0..n-1 (foolsgold, a first round) and a server update (the
mean of the unshifted rows plus noise, for fltrust).

The numpy baselines run on CPU only. A size is skipped when the updates would take more than
`--max-gb` (several copies are alive at once: input, partitions, distances in chunks). Results:
bench/results/aggregators_<device>.json and .md.

    python bench/aggregators.py                  # CPU, every size that fits
    python bench/aggregators.py --device cuda    # GPU
    python bench/aggregators.py --quick          # small sizes, for a smoke test
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

# numpy's BLAS on one thread, like torch (--threads); set before numpy is imported.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import device_name  # noqa: E402
from sim.server.registry import AGGREGATORS  # noqa: E402
from sim.server.base import ServerSetup, aggregation_context  # noqa: E402

DIMS = {"fmnist_cnn": 29_034, "resnet18": 11_689_512}
KRUM_FAMILY = ("krum", "multikrum", "bulyan", "fltk_multikrum", "fltk_bulyan")


def byzantine_f(n: int) -> int:
    """The largest f Bulyan allows (n >= 4f + 3), used by every f-rule so all do the same work."""
    return max(0, (n - 3) // 4)


def rule_f(name: str, n: int) -> int:
    """The f a rule is built with: Bulyan's largest, at least 2 for prodigy (its smallest)."""
    return max(2, byzantine_f(n)) if name == "prodigy" else byzantine_f(n)


def make_rules(n: int, only: list[str] | None = None) -> dict:
    """Every registered rule (or those named in `only`) at its default settings, with the
    largest f Bulyan allows."""
    rules = {}
    for name, rule in AGGREGATORS.items():
        if only and name not in only:
            continue
        settings = None if rule.settings is None else rule.settings()
        setup = ServerSetup(rule_f(name, n), n, n, byzantine_f(n), name)
        rules[name] = rule.from_config(settings, setup)
    return rules


# ----------------------------------------------------------------------------------------------
# baselines


def cdist_krum_scores(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    d = torch.cdist(x, x).square()
    d.fill_diagonal_(math.inf)
    k = min(n - 1, max(1, n - f - 2))
    scores = torch.topk(d, k, dim=1, largest=False).values.sum(dim=1)
    return torch.sort(scores, stable=True).indices


def numpy_gram_krum_scores(a: np.ndarray, f: int) -> np.ndarray:
    n = a.shape[0]
    norms = np.einsum("ij,ij->i", a, a)
    d = norms[:, None] + norms[None, :] - 2 * (a @ a.T)
    np.fill_diagonal(d, np.inf)
    k = min(n - 1, max(1, n - f - 2))
    scores = np.partition(d, k - 1, axis=1)[:, :k].sum(axis=1)
    return np.argsort(scores, kind="stable")


def cdist_sort_bulyan(x: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan as ByzFL-style code writes it: cdist distances, each Krum pick a top-k over the
    rows left, then per coordinate a full sort of the distances to the median."""
    n = x.shape[0]
    d = torch.cdist(x, x).square()
    remaining, selected = list(range(n)), []
    for _ in range(n - 2 * f):
        index = torch.tensor(remaining)
        sub = d[index][:, index].fill_diagonal_(math.inf)
        m = len(remaining)
        k = min(m - 1, max(1, m - f - 2))
        scores = torch.topk(sub, k, dim=1, largest=False).values.sum(dim=1) if m > 1 else sub.new_zeros(1)
        winner = remaining[int(torch.argmin(scores))]
        selected.append(winner)
        remaining.remove(winner)
    selection = x[selected]
    median = selection.median(dim=0).values
    closest = torch.sort((selection - median).abs(), dim=0).indices[: n - 4 * f]
    return selection.gather(0, closest).mean(dim=0)


def numpy_gram(a: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """The float64 Gram matrix of the rows (plus `offset`), a column chunk at a time (no copy of a)."""
    n, d = a.shape
    step = max(1, (1 << 19) // n)
    gram = np.zeros((n, n))
    for start in range(0, d, step):
        chunk = a[:, start : start + step].astype(np.float64)
        if offset is not None:
            chunk += offset[start : start + step]
        gram += chunk @ chunk.T
    return gram


def numpy_prodigy(a: np.ndarray, f: int) -> np.ndarray:
    """ProDiGy as the authors' code computes it, vectorised where numpy allows: the neighbourhood
    of every row is gathered and its mean and std formed from the rows."""
    n = a.shape[0]
    gram = numpy_gram(a)
    norms = np.diagonal(gram)
    distances = np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0)
    np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, : n - 1]
    ascending = np.take_along_axis(distances, order, axis=1)
    scores = np.empty(n)
    for i in range(n):
        group = a[np.append(order[i, : f - 1], i)]
        s1 = np.linalg.norm(group.std(axis=0)) / np.linalg.norm(group.mean(axis=0))
        scores[i] = s1 / ascending[i, f - 1 : n - f - 1].sum()
    scores[np.isin(scores, np.sort(scores)[:f])] = 0
    return (scores / scores.sum()) @ a


def numpy_flame(a: np.ndarray, global_params: np.ndarray, noise: float, seed: int, sklearn_distances: bool) -> np.ndarray:
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics.pairwise import cosine_distances

    n = a.shape[0]
    if sklearn_distances:
        distances = cosine_distances(a + global_params)
    else:
        gram = numpy_gram(a, global_params.astype(np.float64))
        scale = 1 / np.sqrt(np.diagonal(gram))
        distances = np.clip(1 - gram * scale[:, None] * scale[None, :], 0, 2)
        np.fill_diagonal(distances, 0)
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", allow_single_cluster=True,
                     copy=True).fit(distances).labels_
    admitted = np.flatnonzero(labels == 0) if (labels == 0).any() else np.arange(n)
    norms = np.linalg.norm(a, axis=1)
    bound = np.median(norms)
    clipped = (np.minimum(1, bound / norms[admitted]) / len(admitted)) @ a[admitted]
    return clipped + np.random.default_rng(seed).standard_normal(a.shape[1], dtype=np.float32) * (noise * bound)


def numpy_foolsgold(a: np.ndarray, sklearn_similarity: bool) -> np.ndarray:
    from sklearn.metrics.pairwise import cosine_similarity

    n = a.shape[0]
    if sklearn_similarity:
        cs = cosine_similarity(a)
    else:
        gram = numpy_gram(a)
        scale = 1 / np.sqrt(np.diagonal(gram))
        cs = gram * scale[:, None] * scale[None, :]
    np.fill_diagonal(cs, 0)
    top = cs.max(axis=1)
    pardon = top[:, None] < top[None, :]
    cs = np.where(pardon, cs * top[:, None] / np.where(pardon, top[None, :], 1), cs)
    wv = np.clip(1 - cs.max(axis=1), 0, 1)
    wv /= wv.max()
    wv[wv == 1] = 0.99
    with np.errstate(divide="ignore"):
        wv = np.clip(np.log(wv / (1 - wv)) + 0.5, 0, 1)
    return (wv / wv.sum()) @ a


def numpy_fltrust(a: np.ndarray, reference: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1)
    reference_norm = np.linalg.norm(reference)
    trust = np.maximum(a @ reference / (norms * reference_norm), 0)
    return (trust * reference_norm / norms / trust.sum()) @ a


def numpy_trimmed_mean(a: np.ndarray, t: int) -> np.ndarray:
    n = a.shape[0]
    if t == 0:
        return a.mean(axis=0)
    return np.partition(a, [t, n - t - 1], axis=0)[t : n - t].mean(axis=0)


# Above this many elements only the baselines that need no copy of the updates run: torch.cdist
# makes two augmented copies ([n, d + 2] each), and the full sorts of the columns take minutes.
BIG = 100_000_000
NEEDS_COPIES = ("torch.cdist Krum scores", "torch.cdist + torch.sort Bulyan", "torch.sort trimmed mean",
                "torch sign vote", "np sign vote", "torch Weiszfeld", "np Weiszfeld",
                "torch centered clipping", "np centered clipping", "torch clip + mean", "np norms + matvec",
                "sklearn cosine_distances + HDBSCAN FLAME", "sklearn cosine_similarity FoolsGold")


def plain_weiszfeld(x, nu: float, steps: int, ftol: float, lib):
    """The smoothed Weiszfeld loop of `sim.server.rfa` (mean start, stopping test), written with
    whole-matrix temporaries; `lib` is torch or numpy."""
    norm = (lambda a: a.norm(dim=1)) if lib is torch else (lambda a: np.linalg.norm(a, axis=1))
    z = x.mean(0)
    distances = norm(x - z)
    objective = float(distances.mean())
    for _ in range(steps):
        weights = 1.0 / (distances.clamp(min=nu) if lib is torch else np.maximum(distances, nu))
        z = (weights[:, None] * x).sum(0) / weights.sum()
        distances = norm(x - z)
        previous, objective = objective, float(distances.mean())
        if abs(previous - objective) < ftol * objective:
            break
    return z


def plain_centered_clipping(x, tau: float, steps: int, lib):
    v = x[0] * 0
    for _ in range(steps):
        difference = x - v
        norms = difference.norm(dim=1) if lib is torch else np.linalg.norm(difference, axis=1)
        factors = (tau / norms).clamp(max=1.0) if lib is torch else np.minimum(1.0, tau / norms)
        v = v + (difference * factors[:, None]).mean(0)
    return v


def input_passes(name: str, rule) -> int | None:
    """The rule's operation count, as passes over the [n, d] input (see the module docstring). The
    first pass of every rule is the check for non-finite rows (`sim.server.aggregate.split_finite`,
    a row sum), which the plain baselines do not make. The Gram-matrix rules count the passes their
    algorithm needs at least (norms read off the Gram's diagonal where the rule allows), not the
    passes this implementation makes, so `x floor` shows what an implementation leaves on the table."""
    if name == "norm_clipping":
        return 1 + 2  # row norms, one matrix-vector product
    if name == "rlr":
        return 1 + 2  # the sign sum, the mean
    if name == "rfa":
        return 1 + 2 + 2 * rule.steps_run  # mean, first distances, then per step a product and distances
    if name == "centered_clipping":
        return 1 + 2 * rule.iterations  # per step: distances, one matrix-vector product
    if name == "prodigy":
        return 1 + 1 + 1  # the Gram matrix (norms on its diagonal), the weighted sum
    if name == "flame":
        # the Gram of the local models (updates + global model), the updates' own norms, the weighted sum
        return 1 + 1 + 1 + 1 if rule.cluster_on == "model" else 1 + 1 + 1
    if name == "foolsgold":
        return 1 + 2 + 1 + 1  # history = update (a read and a write: a first round), the histories' Gram, the weighted sum
    if name == "fltrust":
        return 1 + 1 + 1  # dot products with the server's update and norms in one pass, the weighted sum
    return None


def gram_multiply_adds(name: str, n: int, d: int) -> int:
    """Multiply-adds of the rule's [n, n] Gram matrix (its symmetric half: n(n+1)/2 dot products of
    length d); 0 for rules without one."""
    return n * (n + 1) // 2 * d if name in ("prodigy", "flame", "foolsgold") else 0


MATMUL_SIDE = 512


def baselines(name: str, x: torch.Tensor, on_cpu: bool, inputs: dict | None = None) -> dict:
    out = _baselines(name, x, on_cpu, inputs or {})
    if x.numel() > BIG and on_cpu:
        out = {k: v for k, v in out.items() if k not in NEEDS_COPIES}
    return out


def _baselines(name: str, x: torch.Tensor, on_cpu: bool, inputs: dict) -> dict:
    n = x.shape[0]
    f = rule_f(name, n)
    a = x.numpy() if on_cpu else None
    out = {}
    if name in ("prodigy", "flame", "foolsgold", "fltrust") and not on_cpu:
        return out  # their baselines are numpy versions
    if name == "prodigy":
        out["numpy direct ProDiGy"] = lambda: numpy_prodigy(a, f)
        out["numpy Gram Krum scores"] = lambda: numpy_gram_krum_scores(a, f)
    elif name == "flame":
        g = inputs["global_params"].numpy()
        out["sklearn cosine_distances + HDBSCAN FLAME"] = lambda: numpy_flame(a, g, 0.001, 0, True)
        out["numpy Gram + HDBSCAN FLAME"] = lambda: numpy_flame(a, g, 0.001, 0, False)
    elif name == "foolsgold":
        out["sklearn cosine_similarity FoolsGold"] = lambda: numpy_foolsgold(a, True)
        out["numpy Gram FoolsGold"] = lambda: numpy_foolsgold(a, False)
    elif name == "fltrust":
        reference = inputs["reference_update"].numpy()
        out["numpy FLTrust"] = lambda: numpy_fltrust(a, reference)
    elif name == "bulyan":  # the whole rule: Krum scores alone are a fraction of its work
        out["torch.cdist + torch.sort Bulyan"] = lambda: cdist_sort_bulyan(x, f)
    elif name in KRUM_FAMILY:
        out["torch.cdist Krum scores"] = lambda: cdist_krum_scores(x, f)
        if on_cpu:
            out["numpy Gram Krum scores"] = lambda: numpy_gram_krum_scores(a, f)
    elif name == "median":
        out["torch.median"] = lambda: x.median(dim=0)
        if on_cpu:
            out["np.median"] = lambda: np.median(a, axis=0)
            middle = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
            out["np.partition median"] = lambda: np.partition(a, middle, axis=0)[middle].mean(axis=0)
    elif name == "trimmed_mean":
        t = math.floor(0.1 * n + 1e-9)
        out["torch.sort trimmed mean"] = lambda: x.sort(dim=0).values[t : n - t].mean(dim=0)
        if on_cpu:
            out["np.partition trimmed mean"] = lambda: numpy_trimmed_mean(a, t)
    elif name == "sparsefed":
        k = max(1, int(0.1 * x.shape[1]))
        out["torch clip + mean + topk"] = lambda: torch.topk(
            (x * (1.0 / x.norm(dim=1, keepdim=True)).clamp(max=1.0)).mean(dim=0).abs(), k)
    elif name == "robust_dpfl":
        out["torch row means"] = lambda: x.mean(dim=1)
        if on_cpu:
            out["np row means"] = lambda: a.mean(axis=1)
    elif name == "norm_clipping":
        clip = 3.0
        out["torch clip + mean"] = lambda: (x * (clip / x.norm(dim=1, keepdim=True)).clamp(max=1.0)).mean(dim=0)
        if on_cpu:
            out["np norms + matvec"] = lambda: np.minimum(1.0, clip / np.linalg.norm(a, axis=1)) @ a / n
    elif name == "rlr":
        threshold = byzantine_f(n) + 1
        def torch_vote():
            mean = x.mean(dim=0)
            return torch.where(torch.sign(x).sum(dim=0).abs() >= threshold, mean, -mean)
        out["torch sign vote"] = torch_vote
        if on_cpu:
            def numpy_vote():
                mean = a.mean(axis=0)
                return np.where(np.abs(np.sign(a).sum(axis=0)) >= threshold, mean, -mean)
            out["np sign vote"] = numpy_vote
    elif name == "rfa":
        out["torch Weiszfeld"] = lambda: plain_weiszfeld(x, 1e-5, 4, 1e-6, torch)
        if on_cpu:
            out["np Weiszfeld"] = lambda: plain_weiszfeld(a, 1e-5, 4, 1e-6, np)
    elif name == "centered_clipping":
        out["torch centered clipping"] = lambda: plain_centered_clipping(x, 10.0, 1, torch)
        if on_cpu:
            out["np centered clipping"] = lambda: plain_centered_clipping(a, 10.0, 1, np)
    else:  # fedavg
        out["torch.mean"] = lambda: x.mean(dim=0)
        if on_cpu:
            out["np.mean"] = lambda: a.mean(axis=0)
    return out


# ----------------------------------------------------------------------------------------------
# timing


def timed(fns: dict, device: str, repeats: int, warm_up: bool = True) -> dict:
    """Each callable once to warm up, then `repeats` rounds, in turn; best and median seconds."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    if warm_up:
        for fn in fns.values():
            fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: {"best_s": min(v), "median_s": statistics.median(v)} for name, v in times.items()}


def run_size(n: int, d: int, device: str, repeats: int, warm_up: bool, seed: int = 0, only=None) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=generator) * 0.01).to(device)
    x[: byzantine_f(n)] += 0.05  # a group of shifted rows, as an attack would send
    # what the context-reading rules get: a global model, and a server update near the benign mean
    inputs = {
        "global_params": (torch.randn(d, generator=generator) * 0.1).to(device),
        "reference_update": (x[byzantine_f(n):].mean(dim=0).cpu() + torch.randn(d, generator=generator) * 0.001).to(device),
    }
    rules = make_rules(n, only)
    rows = []
    for name, rule in rules.items():
        if name == "sparsefed":
            rule.error = None

        def call(rule=rule, first_round=rule.state_dict()):
            rule.load_state_dict(first_round)  # every call a first round (SparseFed's accumulator, FoolsGold's history)
            context = aggregation_context(rule, round=0, clients=list(range(n)), seed=seed,
                                          global_params=inputs["global_params"],
                                          reference_update=lambda round, params: inputs["reference_update"])
            return rule(x, context)

        fns = {"rule": call, **baselines(name, x, device == "cpu", inputs)}
        counted = input_passes(name, rule) is not None
        multiply_adds = gram_multiply_adds(name, n, d)
        if counted:
            fns["one read (torch.sum over rows)"] = lambda: x.sum(dim=1)
        products = matmuls(device) if multiply_adds else {}
        fns.update(products)
        print(f"  {name} ...", file=sys.stderr, flush=True)
        measured = timed(fns, device, repeats, warm_up)
        one_read = measured.pop("one read (torch.sum over rows)")["best_s"] if counted else None
        matmul_s = min(measured.pop(k)["best_s"] for k in products) if products else None
        passes = input_passes(name, rule)
        base = {k: v for k, v in measured.items() if k != "rule"}
        fastest = min(base, key=lambda k: base[k]["best_s"]) if base else None
        rows.append({
            "rule": name,
            "clients": n,
            "dim": d,
            "f": rule_f(name, n) if hasattr(AGGREGATORS[name], "resolve_f") or name == "prodigy" else None,
            "rule_s": measured["rule"]["best_s"],
            "rule_median_s": measured["rule"]["median_s"],
            "baselines": base,
            "fastest_baseline": fastest,
            "x_fastest_baseline": base[fastest]["best_s"] / measured["rule"]["best_s"] if base else None,
        })
        if counted:
            rule_s = measured["rule"]["best_s"]
            rows[-1].update({
                "input_passes": passes,
                "one_read_s": one_read,
                "x_pass_bound": passes * one_read / rule_s,
                "effective_gb_s": passes * n * d * x.element_size() / rule_s / 1e9,
            })
            if multiply_adds:
                rate = MATMUL_SIDE**3 / matmul_s  # multiply-adds per second
                arithmetic_s = multiply_adds / rate
                rows[-1].update({
                    "gram_multiply_adds": multiply_adds,
                    "matmul_gflops_f64": 2 * rate / 1e9,
                    "arithmetic_s": arithmetic_s,
                    "floor_s": passes * one_read + arithmetic_s,
                    "x_floor": (passes * one_read + arithmetic_s) / rule_s,
                })
    del x
    return rows


def matmuls(device: str) -> dict:
    """A float64 [512, 512] matrix product in torch and in numpy (numpy only on CPU): the faster sets
    the rate of a Gram matrix's multiply-adds in the operation floor (the rules build their Grams in
    float64 with numpy's BLAS on CPU, torch's elsewhere)."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(MATMUL_SIDE, MATMUL_SIDE, generator=generator, dtype=torch.float64).to(device)
    out = {"torch 512x512 float64 matmul": lambda: a @ a}
    if device == "cpu":
        values = a.numpy()
        out["numpy 512x512 float64 matmul"] = lambda: values @ values
    return out


def fits(n: int, d: int, device: str, max_gb: float) -> tuple[bool, str]:
    need = n * d * 4 / 2**30
    if device == "cuda":
        free = torch.cuda.mem_get_info()[0] / 2**30
        limit = min(max_gb, free / 4)
    else:
        limit = max_gb
    if need > limit:
        return False, f"the updates alone take {need:.1f} GiB, over the {limit:.1f} GiB allowed (--max-gb; several copies are alive at once)"
    return True, ""


def markdown(result: dict) -> str:
    lines = [
        f"# Aggregation rules on {result['device']} (torch {result['torch']}, float32 updates)",
        "",
        result["what"],
        "",
        "| clients | d | rule | rule (ms) | fastest baseline | baseline (ms) | x baseline | other baselines (ms) |",
        "|---:|---:|---|---:|---|---:|---:|---|",
    ]
    for r in result["rows"]:
        if r["fastest_baseline"] is None:
            lines.append(f"| {r['clients']} | {r['dim']:,} | {r['rule']} | {r['rule_s'] * 1e3:,.1f} | none at this size | | | |")
            continue
        fastest = r["baselines"][r["fastest_baseline"]]["best_s"]
        others = ", ".join(f"{k} {v['best_s'] * 1e3:,.1f}" for k, v in r["baselines"].items() if k != r["fastest_baseline"])
        lines.append(
            f"| {r['clients']} | {r['dim']:,} | {r['rule']} | {r['rule_s'] * 1e3:,.1f} | {r['fastest_baseline']} | "
            f"{fastest * 1e3:,.1f} | {r['x_fastest_baseline']:.2f}x | {others} |"
        )
    if result["skipped"]:
        lines += ["", "Skipped:"] + [f"- n={s['clients']}, d={s['dim']:,}: {s['why']}" for s in result["skipped"]]
    counted = [r for r in result["rows"] if r.get("input_passes") is not None]
    if counted:
        lines += [
            "",
            "Operation counts: passes over the [n, d] float32 input, one pass timed as `torch.sum` of each row; for "
            "the Gram-matrix rules also the Gram's multiply-adds (n(n+1)/2 x d) at the rate of the faster float64 "
            "512x512 matrix product (torch or numpy), both timed in the same run, interleaved with the rule. "
            "floor = passes x one pass + multiply-adds / rate (taken one after the other, no overlap); "
            "'x floor' = floor / rule time (1: as fast as that floor).",
            "",
            "| clients | d | rule | passes | one pass (ms) | Gram multiply-adds | float64 GFLOP/s | floor (ms) | rule (ms) | x floor | GB/s |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in counted:
            gram = r.get("gram_multiply_adds")
            floor = r.get("floor_s", r["input_passes"] * r["one_read_s"])
            lines.append(
                f"| {r['clients']} | {r['dim']:,} | {r['rule']} | {r['input_passes']} | {r['one_read_s'] * 1e3:,.2f} | "
                + (f"{gram:.3g} | {r['matmul_gflops_f64']:.1f} | " if gram else "0 | | ")
                + f"{floor * 1e3:,.1f} | {r['rule_s'] * 1e3:,.1f} | {floor / r['rule_s']:.2f} | {r['effective_gb_s']:.1f} |"
            )
    lines += ["", "Targets:"] + [f"- {t}" for t in result["targets"]]
    return "\n".join(lines) + "\n"


def targets(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if r["clients"] == 100 and r["dim"] == DIMS["fmnist_cnn"] and r["fastest_baseline"] is not None:
            ok = r["x_fastest_baseline"] >= 1.0
            out.append(f"{'met' if ok else 'MISSED'}: {r['rule']} at n=100, d=29,034 at least as fast as the fastest "
                       f"baseline ({r['fastest_baseline']}): {r['x_fastest_baseline']:.2f}x")
    return out or ["not measured: n=100, d=29,034 was not in this run"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--clients", default="10,100,1000", help="clients per round, comma-separated")
    parser.add_argument("--dims", default=",".join(DIMS), help=f"model sizes: names ({', '.join(DIMS)}) or counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per rule and baseline (best counts)")
    parser.add_argument("--mid-repeats", type=int, default=3, help="timed calls for sizes of 1e7 to 1e8 elements")
    parser.add_argument("--big-repeats", type=int, default=1,
                        help="timed calls for sizes over 1e8 elements (on CPU: no warm-up call, copy-free baselines only)")
    parser.add_argument("--max-gb", type=float, default=5.0, help="largest update matrix to try, GiB")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rules", default="", help="only these rules (comma-separated names; default: every one)")
    parser.add_argument("--quick", action="store_true", help="n = 10, 30 and d = 2,000 only: a smoke test")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. n100 -> aggregators_cpu_n100.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible; run on a GPU machine or use --device cpu")
    if min(args.repeats, args.mid_repeats, args.big_repeats) < 1:
        parser.error(f"--repeats, --mid-repeats and --big-repeats must be >= 1, got {args.repeats}, {args.mid_repeats}, {args.big_repeats}")
    torch.set_num_threads(args.threads)
    try:
        clients = [int(c) for c in args.clients.split(",") if c]
        dims = [DIMS[v] if v in DIMS else int(v) for v in args.dims.split(",") if v]
    except ValueError as exc:
        parser.error(f"--clients takes integers and --dims names or integers: {exc}")
    only = [name for name in args.rules.split(",") if name]
    unknown = sorted(set(only) - set(AGGREGATORS))
    if unknown:
        parser.error(f"--rules: unknown rule(s) {', '.join(unknown)}; known: {', '.join(AGGREGATORS)}")
    if args.quick:
        clients, dims = [10, 30], [2_000]
    rows, skipped = [], []
    started = time.perf_counter()
    threads = (f", {torch.get_num_threads()} torch thread(s), numpy BLAS threads "
               f"{os.environ['OPENBLAS_NUM_THREADS']}" if args.device == "cpu" else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"aggregators_{args.device}" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")

    def write(final: bool) -> str:
        """The results so far (rewritten after every size, so a stopped run keeps what it measured)."""
        result = {
            "device": f"{device_name(args.device)}{threads}",
            "torch": torch.__version__,
            "numpy": np.__version__,
            "what": (
                "Random float32 updates (N(0, 0.01^2), the first f rows shifted by 0.05); f = floor((n-3)/4) for krum, "
                "multikrum, bulyan and the Krum baselines (at least 2 for prodigy); trimmed_mean beta 0.1; sparsefed k 0.1, "
                "clip 1; flame lambda 0.001 on local models (global N(0, 0.1^2)); foolsgold in a first round; fltrust "
                "against the mean of the unshifted rows plus N(0, 0.001^2). Best of "
                f"{args.repeats} interleaved calls after one warm-up call ({args.mid_repeats} from 1e7 elements; "
                f"{args.big_repeats} above 1e8, where on CPU there is no warm-up call and only the baselines that need no "
                "copy of the updates run: torch.cdist makes two [n, d+2] copies, full column sorts take minutes). "
                "'x baseline' = fastest baseline time / rule time (above 1: the rule is faster). "
                f"Wall time of the whole benchmark: {time.perf_counter() - started:,.0f} s"
                + ("." if final else " so far (stopped or still running).")
            ),
            "command": "python bench/aggregators.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "rows": rows,
            "skipped": skipped,
            "targets": targets(rows),
        }
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        md = markdown(result)
        (out / f"{stem}.md").write_text(md)
        return md

    for d in dims:
        for n in clients:
            ok, why = fits(n, d, args.device, args.max_gb)
            if not ok:
                print(f"n={n}, d={d:,}: skipped: {why}", file=sys.stderr, flush=True)
                skipped.append({"clients": n, "dim": d, "why": why})
                continue
            print(f"n={n}, d={d:,}", file=sys.stderr, flush=True)
            big = n * d > BIG
            repeats = args.big_repeats if big else args.mid_repeats if n * d > 10_000_000 else args.repeats
            rows += run_size(n, d, args.device, repeats, warm_up=not (big and args.device == "cpu"), only=only)
            write(final=False)
    md = write(final=True)
    print(md)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
