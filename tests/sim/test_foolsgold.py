"""FoolsGold: worked by hand, against a transcription of the authors' algorithm over many rounds,
its settings, and its history surviving kill -9 through the run's checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sim.config import load_config
from sim.errors import ConfigError
from sim.runner import run
from sim.server.base import AggregationContext
from sim.server.foolsgold import FoolsGold, foolsgold_weights
from sim.server.registry import build_aggregator
from sim.state import read_checkpoint
from simtest import metrics_without_timing

ROOT = Path(__file__).resolve().parents[2]


def call(rule, updates, clients):
    return rule(torch.as_tensor(updates, dtype=torch.float64), AggregationContext(clients=list(clients)))


def test_foolsgold_gives_sybils_with_the_same_history_no_weight():
    # Rows 0 and 1 are copies, row 2 is orthogonal to everything, row 3 at 45 degrees to 0 and 1.
    # c = cos((1,0,0), (1,0,1)) = 1/sqrt2. Cosines with a zero diagonal, and v = the row maximum:
    #   row 0: [0, 1, 0, c]  v = 1
    #   row 1: [1, 0, 0, c]  v = 1
    #   row 2: [0, 0, 0, 0]  v = 0
    #   row 3: [c, c, 0, 0]  v = c
    # Pardoning (v_i < v_j: cs_ij * v_i / v_j): row 3 toward rows 0, 1 -> c * c / 1 = 0.5; row 2
    # stays 0. Row maxima 1, 1, 0, 0.5 -> 1 - max = 0, 0, 1, 0.5; divided by the largest (1) and
    # 1 -> 0.99: 0, 0, 0.99, 0.5. Logit + 0.5: ln 0 -> 0, ln(99) + 0.5 = 5.1 -> 1, ln(1) + 0.5 = 0.5.
    # Weights 0, 0, 1, 0.5: update = ((0, 1, 0) + 0.5 (1, 0, 1)) / 1.5 = (1/3, 2/3, 1/3).
    updates = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 1.0]])
    result = call(FoolsGold(), updates, [10, 11, 12, 13])
    assert result.kept == [2, 3]
    assert np.allclose(result.update.numpy(), [1 / 3, 2 / 3, 1 / 3], rtol=1e-12)
    weights = foolsgold_weights(torch.tensor(updates))
    assert np.allclose(weights.numpy(), [0, 0, 1, 0.5], rtol=1e-12)


def test_foolsgold_weighs_by_history_not_by_this_round_alone():
    rule = FoolsGold()
    # Round 0: clients 1 and 2 send the same direction; client 3 another one.
    call(rule, [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [1, 2, 3])
    # Round 1: all three send distinct directions, but clients 1 and 2 keep their shared history
    # (1, 0) + (0.1, 0) and (1, 0) + (0, 0.1) are still near-parallel, so both stay suspicious.
    result = call(rule, [[0.1, 0.0], [0.0, 0.1], [1.0, 1.0]], [1, 2, 3])
    weights = foolsgold_weights(torch.stack([rule.history[c] for c in (1, 2, 3)]))
    assert weights[2] == 1 and weights[0] < 1 and weights[1] < 1
    assert torch.allclose(rule.history[1], torch.tensor([1.1, 0.0], dtype=torch.float64))
    assert 2 in result.kept


def test_foolsgold_with_only_aligned_histories_takes_no_step():
    result = call(FoolsGold(), [[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]], [0, 1, 2])
    assert result.kept == [] and torch.equal(result.update, torch.zeros(2, dtype=torch.float64))


def test_foolsgold_gives_non_finite_rows_no_history():
    rule = FoolsGold()
    result = rule(torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 1.0]]), AggregationContext(clients=[4, 5, 6]))
    assert result.rejected_nonfinite == [1]
    assert sorted(rule.history) == [4, 6]


# ----------------------------------------------------------------------------------------------
# against the authors' algorithm (their foolsgold(): cosine_similarity - I, pardoning loop,
# 1 - max, rescale, 0.99, logit, clip), transcribed with loops, over many rounds of histories


def oracle_weights(histories, confidence):
    n = len(histories)
    norms = [float(np.linalg.norm(h)) for h in histories]
    cs = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j and norms[i] > 0 and norms[j] > 0:
                cs[i][j] = float(np.dot(histories[i], histories[j])) / (norms[i] * norms[j])
    maxcs = [max(cs[i]) for i in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j and maxcs[i] < maxcs[j]:
                cs[i][j] = cs[i][j] * maxcs[i] / maxcs[j]
    wv = [min(1.0, max(0.0, 1 - max(cs[i]))) for i in range(n)]
    top = max(wv)
    if top == 0:
        return [0.0] * n
    wv = [w / top for w in wv]
    wv = [0.99 if w == 1 else w for w in wv]
    out = []
    for w in wv:
        value = confidence * (np.log(w / (1 - w)) + 0.5) if w > 0 else -np.inf
        out.append(min(1.0, max(0.0, value)))
    return out


def test_foolsgold_matches_the_oracle_over_many_rounds():
    rng = np.random.default_rng(0)
    compared = partial = 0
    for trial in range(40):
        clients, d = int(rng.integers(4, 12)), int(rng.integers(2, 20))
        confidence = float(rng.choice([0.5, 1.0, 2.0]))
        sybils = rng.choice(clients, size=int(rng.integers(0, clients // 2 + 1)), replace=False)
        goal = rng.normal(size=d)
        rule, history = FoolsGold(confidence), {}
        for round_index in range(int(rng.integers(1, 8))):
            selected = sorted(rng.choice(clients, size=int(rng.integers(2, clients + 1)), replace=False).tolist())
            rows = rng.normal(size=(len(selected), d))
            for k, c in enumerate(selected):
                if c in sybils:
                    rows[k] = goal + rng.normal(size=d) * 0.05
            for k, c in enumerate(selected):
                history[c] = history.get(c, np.zeros(d)) + rows[k]
            weights = oracle_weights([history[c] for c in selected], confidence)
            total = sum(weights)
            expected = sum(w * rows[k] for k, w in enumerate(weights)) / total if total > 0 else np.zeros(d)
            result = call(rule, rows, selected)
            assert result.kept == [k for k, w in enumerate(weights) if w > 0], (trial, round_index)
            assert np.allclose(result.update.numpy(), expected, rtol=1e-9, atol=1e-12), (trial, round_index)
            compared += 1
            partial += 0 < sum(1 for w in weights if 0 < w < 1)
    assert compared > 100 and partial > 20  # many rounds, and weights strictly between 0 and 1


# ----------------------------------------------------------------------------------------------
# settings and state


def test_foolsgold_is_built_from_the_config():
    rule = build_aggregator(SimpleNamespace(aggregator="foolsgold", foolsgold={"confidence": 2.0}), 10, 100, 25)
    assert isinstance(rule, FoolsGold) and rule.confidence == 2.0


@pytest.mark.parametrize("value", ["0", "-1", "inf", "x"])
def test_foolsgold_refuses_a_bad_confidence(value):
    with pytest.raises(ConfigError, match="server.foolsgold.confidence"):
        load_config(overrides=["server.aggregator=foolsgold", f"server.foolsgold.confidence={value}"])


def test_foolsgold_state_round_trips():
    rule = FoolsGold()
    call(rule, [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], [7, 3, 5])
    copy = FoolsGold()
    copy.load_state_dict(rule.state_dict())
    assert sorted(copy.history) == [3, 5, 7]
    for c in (3, 5, 7):
        assert torch.equal(copy.history[c], rule.history[c])
    assert FoolsGold().state_dict() == {"clients": [], "history": None}


TINY = [
    "data.dataset=synthetic", "data.synthetic_train_size=400", "data.synthetic_test_size=100", "model=mlp",
    "clients.num_clients=8", "clients.num_malicious=2", "clients.clients_per_round=5",
    "selection.schedule=periodic", "selection.period=3", "selection.burst_rounds=1", "selection.burst_malicious=2",
    "training.local_steps=2", "training.batch_size=16", "server.aggregator=foolsgold",
    "eval.batch_size=50", "eval.test_size=60",
]


@pytest.mark.usefixtures("one_thread")
def test_foolsgold_history_resumes_exactly_after_kill_9(tmp_path):
    rounds = 8
    cfg = load_config(overrides=[*TINY, f"rounds={rounds}"])
    run(cfg, tmp_path / "straight", progress=False)

    stopped = tmp_path / "stopped"
    argv = [sys.executable, "-m", "sim", "run", *[a for o in TINY for a in ("--set", o)], "--rounds", str(rounds),
            "--out", str(stopped), "--no-progress"]
    process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done = 0
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (stopped / "checkpoint.pt").is_file():
                done = read_checkpoint(stopped / "checkpoint.pt")["next_round"]
                if done >= 3:
                    break
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    assert 3 <= done < rounds, "the run was not stopped part-way"
    saved = read_checkpoint(stopped / "checkpoint.pt")["aggregator_state"]
    assert len(saved["clients"]) >= 5 and saved["history"].shape[0] == len(saved["clients"])

    run(cfg, stopped, resume=True, progress=False)
    assert metrics_without_timing(stopped) == metrics_without_timing(tmp_path / "straight")
    # The histories at the end are the uninterrupted run's to the bit (a history lost at the
    # restart would lack the rounds before the kill).
    resumed = read_checkpoint(stopped / "checkpoint.pt")["aggregator_state"]
    straight = read_checkpoint(tmp_path / "straight" / "checkpoint.pt")["aggregator_state"]
    assert resumed["clients"] == straight["clients"] and torch.equal(resumed["history"], straight["history"])
