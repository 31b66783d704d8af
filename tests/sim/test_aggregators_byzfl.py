"""rfa (start zero, no stopping test), centered_clipping and norm_clipping's clipped mean against
the peer library ByzFL (LPD-EPFL/byzfl, PyPI 0.0.11) on 1,000 random cases each.

ByzFL runs in an environment of its own (bench/byzfl_venv.sh: torch==2.13.0 installed first,
ByzFL with --no-deps), built on the first run and reused; the cases go to it as a file
(bench/byzfl_oracle.py). Skipped, with the reason, when the environment cannot be built (e.g.
offline without the packages on this machine). Set LEADFL_SKIP_PEER_VENV=1 to skip it outright.

What ByzFL computes, and how it maps to the rules here:
* GeometricMedian(nu, T): T smoothed Weiszfeld steps from z = 0, no stopping test
  -> rfa(nu, iterations=T, ftol=0, start=zero). (The RFA authors' code starts at the mean and
  stops on the objective; that default is checked against a transcription of their code in
  test_aggregators_clip_rlr_rfa_cc.py.)
* CenteredClipping(tau, L) with its center m -> centered_clipping(tau, iterations=L) with
  last_global_update = m.
* Average(Clipping(c)) -> norm_clipping(clip=c, noise_std=0).
* attacks.InnerProductManipulation(tau) on the honest rows -> the model-poisoning attack ipm
  (epsilon = tau): every malicious row equals ByzFL's vector.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from sim.attacks.model.ipm import IPM
from sim.attacks.model_poisoning import AttackContext, attack_generator
from sim.server.base import AggregationContext
from sim.server.centered_clipping import CenteredClipping
from sim.server.norm_clipping import NormClipping
from sim.server.rfa import RFA

ROOT = Path(__file__).resolve().parents[2]
CASES = 1000


@pytest.fixture(scope="module")
def byzfl_python() -> str:
    if os.environ.get("LEADFL_SKIP_PEER_VENV"):
        pytest.skip("LEADFL_SKIP_PEER_VENV is set: the ByzFL environment is not built")
    try:
        built = subprocess.run(["bash", str(ROOT / "bench" / "byzfl_venv.sh")], cwd=ROOT, capture_output=True,
                               text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        pytest.skip("building the ByzFL environment (bench/byzfl_venv.sh) took over 30 minutes")
    if built.returncode != 0:
        lines = [line for line in built.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
        pytest.skip("the ByzFL environment could not be built (bench/byzfl_venv.sh): " + " | ".join(lines[-3:]))
    return built.stdout.strip().splitlines()[-1]


def byzfl(python: str, cases: list[dict], tmp_path: Path) -> list[torch.Tensor]:
    torch.save(cases, tmp_path / "cases.pt")
    finished = subprocess.run([python, str(ROOT / "bench" / "byzfl_oracle.py"), str(tmp_path / "cases.pt"),
                               str(tmp_path / "results.pt")], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert finished.returncode == 0, finished.stderr[-2000:]
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    assert len(results) == len(cases)
    return results


def random_rows(generator: np.random.Generator) -> torch.Tensor:
    """Assorted sizes and scales, with repeated rows, zero rows and an outlier now and then."""
    n = int(generator.integers(1, 20))
    d = int(generator.integers(1, 60))
    x = generator.normal(size=(n, d)) * 10.0 ** generator.uniform(-3, 2)
    kind = generator.integers(0, 4)
    if kind == 1:
        x[: generator.integers(1, n + 1)] = x[0]
    elif kind == 2:
        x[generator.integers(0, n)] = 0.0
    elif kind == 3:
        x[generator.integers(0, n)] *= 1000.0
    return torch.from_numpy(x.astype(np.float32))


def agree(ours: torch.Tensor, theirs: torch.Tensor, x: torch.Tensor, rtol: float = 1e-4) -> bool:
    scale = max(1.0, float(x.abs().max()))
    return torch.allclose(ours.double(), theirs.double(), rtol=rtol, atol=rtol * scale)


def test_rfa_from_zero_matches_byzfl_geometric_median(byzfl_python, tmp_path):
    generator = np.random.default_rng(10)
    cases = []
    for _ in range(CASES):
        cases.append({"rule": "geometric_median", "x": random_rows(generator),
                      "nu": float(10.0 ** generator.uniform(-6, 0)), "T": int(generator.integers(1, 8))})
    theirs = byzfl(byzfl_python, cases, tmp_path)
    for index, (case, expected) in enumerate(zip(cases, theirs)):
        ours = RFA(nu=case["nu"], iterations=case["T"], ftol=0.0, start="zero")(case["x"]).update
        assert agree(ours, expected, case["x"]), index


def test_centered_clipping_matches_byzfl(byzfl_python, tmp_path):
    generator = np.random.default_rng(11)
    cases = []
    for _ in range(CASES):
        x = random_rows(generator)
        choice = generator.integers(0, 3)
        center = None if choice == 0 else (x[int(generator.integers(0, x.shape[0]))].clone() if choice == 1
                                           else torch.from_numpy(generator.normal(size=x.shape[1]).astype(np.float32)))
        cases.append({"rule": "centered_clipping", "x": x, "center": center,
                      "tau": float(10.0 ** generator.uniform(-3, 2)), "L": int(generator.integers(1, 5))})
    theirs = byzfl(byzfl_python, cases, tmp_path)
    for index, (case, expected) in enumerate(zip(cases, theirs)):
        context = AggregationContext(last_global_update=case["center"])
        ours = CenteredClipping(tau=case["tau"], iterations=case["L"])(case["x"], context).update
        assert agree(ours, expected, case["x"]), index


def test_norm_clipping_matches_byzfl_clipping_then_average(byzfl_python, tmp_path):
    generator = np.random.default_rng(12)
    cases = [{"rule": "clipping_mean", "x": random_rows(generator), "c": float(10.0 ** generator.uniform(-3, 2))}
             for _ in range(CASES)]
    theirs = byzfl(byzfl_python, cases, tmp_path)
    for index, (case, expected) in enumerate(zip(cases, theirs)):
        ours = NormClipping(clip=case["c"])(case["x"], AggregationContext()).update
        assert agree(ours, expected, case["x"], rtol=1e-5), index


def test_ipm_matches_byzfl_inner_product_manipulation(byzfl_python, tmp_path):
    generator = np.random.default_rng(13)
    cases = []
    for _ in range(CASES):
        x = random_rows(generator)
        malicious = torch.from_numpy(generator.integers(0, 2, size=x.shape[0]).astype(bool))
        if bool(malicious.all()):
            malicious[0] = False  # at least one honest row
        if not bool(malicious.any()):
            malicious[-1] = True if x.shape[0] > 1 else False
        cases.append({"rule": "ipm", "x": x[~malicious].clone(), "all": x, "malicious": malicious,
                      "tau": float(10.0 ** generator.uniform(-2, 1))})
    theirs = byzfl(byzfl_python, [{"rule": "ipm", "x": c["x"], "tau": c["tau"]} for c in cases], tmp_path)
    compared = 0
    for index, (case, expected) in enumerate(zip(cases, theirs)):
        context = AttackContext(round=0, global_params=torch.zeros(1), last_global_update=None,
                                generator=attack_generator(0, 0), clients=list(range(case["all"].shape[0])))
        out = IPM(epsilon=case["tau"])(case["all"], case["malicious"], context)
        for row in out[case["malicious"]]:
            assert agree(row, expected, case["all"], rtol=1e-5), index
            compared += 1
    assert compared >= CASES // 2
