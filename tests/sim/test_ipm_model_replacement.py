"""IPM (Xie et al., UAI 2019) and model replacement / constrain-and-scale (Bagdasaryan et al.,
AISTATS 2020): cases worked by hand, and 1,000 random cases each against a direct transcription of
the papers' formulas in plain Python loops over numpy arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sim.attacks.model.ipm import IPM
from sim.attacks.model.model_replacement import ModelReplacement
from sim.attacks.model_poisoning import MODEL_POISONING, AttackContext, attack_generator
from sim.config import load_config
from sim.errors import ConfigError


def context(n: int) -> AttackContext:
    return AttackContext(round=0, global_params=torch.zeros(1), last_global_update=None,
                         generator=attack_generator(0, 0), clients=list(range(n)))


def test_ipm_by_hand():
    updates = torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]])
    out = IPM(epsilon=0.5)(updates, torch.tensor([False, False, True]), context(3))
    # benign mean (2, 3); -0.5 times it
    assert out.tolist() == [[1.0, 2.0], [3.0, 4.0], [-1.0, -1.5]]
    # Its inner product with the benign mean is negative.
    assert float(out[2] @ updates[:2].mean(dim=0)) < 0


def ipm_transcribed(rows: np.ndarray, malicious: list[bool], epsilon: float) -> np.ndarray:
    out = rows.copy()
    benign = [i for i, flag in enumerate(malicious) if not flag]
    if not benign:
        return out
    for j in range(rows.shape[1]):
        mean = sum(rows[i, j] for i in benign) / len(benign)
        for i, flag in enumerate(malicious):
            if flag:
                out[i, j] = -epsilon * mean
    return out


def test_ipm_matches_the_formula_on_1000_random_cases():
    generator = np.random.default_rng(0)
    for _ in range(1000):
        n, d = int(generator.integers(1, 9)), int(generator.integers(1, 6))
        rows = generator.normal(size=(n, d)) * 10.0 ** generator.integers(-3, 4)
        malicious = [bool(flag) for flag in generator.integers(0, 2, size=n)]
        epsilon = float(generator.uniform(0.01, 10))
        got = IPM(epsilon)(torch.tensor(rows), torch.tensor(malicious), context(n)).numpy()
        np.testing.assert_allclose(got, ipm_transcribed(rows, malicious, epsilon), rtol=1e-12, atol=1e-12)


def test_model_replacement_by_hand():
    updates = torch.tensor([[3.0, 4.0], [0.5, 0.0], [1.0, 1.0], [0.0, -0.5]])
    malicious = torch.tensor([True, False, True, False])
    # n = 4, m = 2: gamma = 2
    assert ModelReplacement()(updates, malicious, context(4))[[0, 2]].tolist() == [[6.0, 8.0], [2.0, 2.0]]
    # Bound 5: (6, 8) has norm 10 and is halved; (2, 2) (norm 2.83) stays.
    bounded = ModelReplacement(norm_bound=5.0)(updates, malicious, context(4))[[0, 2]]
    assert bounded.tolist() == [[3.0, 4.0], [2.0, 2.0]]
    assert ModelReplacement(scale=3.0)(updates, malicious, context(4))[0].tolist() == [9.0, 12.0]


def test_model_replacement_replaces_the_mean_when_the_benign_updates_cancel():
    # Two attackers with the same update X - G, benign updates summing to zero: FedAvg lands on X.
    own = torch.tensor([0.3, -1.2, 2.0])
    updates = torch.stack([own, torch.tensor([1.0, 2.0, 3.0]), own, torch.tensor([-1.0, -2.0, -3.0]),
                           torch.zeros(3)])
    uploads = ModelReplacement()(updates, torch.tensor([True, False, True, False, False]), context(5))
    assert torch.allclose(uploads.mean(dim=0), own, atol=1e-6)


def model_replacement_transcribed(rows, malicious, scale, bound):
    n, m = len(rows), sum(malicious)
    gamma = n / m if scale is None else scale
    out = rows.copy()
    for i, flag in enumerate(malicious):
        if not flag:
            continue
        scaled = [gamma * value for value in rows[i]]
        norm = math.sqrt(sum(value * value for value in scaled))
        if bound is not None and norm > bound:
            scaled = [value * bound / norm for value in scaled]
        out[i] = scaled
    return out


def test_model_replacement_matches_the_formula_on_1000_random_cases():
    generator = np.random.default_rng(1)
    for _ in range(1000):
        n, d = int(generator.integers(1, 9)), int(generator.integers(1, 6))
        rows = generator.normal(size=(n, d)) * 10.0 ** generator.integers(-2, 3)
        malicious = [bool(flag) for flag in generator.integers(0, 2, size=n)]
        if not any(malicious):
            malicious[int(generator.integers(0, n))] = True
        scale = None if generator.random() < 0.5 else float(generator.uniform(0.1, 20))
        bound = None if generator.random() < 0.5 else float(generator.uniform(0.01, 10))
        got = ModelReplacement(scale, bound)(torch.tensor(rows), torch.tensor(malicious), context(n)).numpy()
        np.testing.assert_allclose(got, model_replacement_transcribed(rows, malicious, scale, bound),
                                   rtol=1e-12, atol=1e-12)


def test_both_are_registered_and_own_their_settings():
    assert MODEL_POISONING["ipm"] is IPM and MODEL_POISONING["model_replacement"] is ModelReplacement
    cfg = load_config(overrides=["model_poisoning.type=model_replacement", "model_poisoning.model_replacement.norm_bound=2",
                                 "model_poisoning.ipm.epsilon=0.1"])
    assert cfg.model_poisoning.model_replacement.norm_bound == 2.0 and cfg.model_poisoning.ipm.epsilon == 0.1


@pytest.mark.parametrize("override, message", [
    ("model_poisoning.ipm.epsilon=0", r"model_poisoning\.ipm\.epsilon=0\.0 is out of range: it must be > 0; "
                                      r"fix: --set model_poisoning\.ipm\.epsilon=0\.5"),
    ("model_poisoning.model_replacement.scale=-1", r"model_poisoning\.model_replacement\.scale=-1\.0 is out of range: "
                                                   r"it must be > 0"),
    ("model_poisoning.model_replacement.norm_bound=0", r"model_poisoning\.model_replacement\.norm_bound=0\.0 is out "
                                                       r"of range: it must be > 0"),
])
def test_bad_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_model_replacement_needs_an_attack_that_trains_the_update_it_scales():
    with pytest.raises(ConfigError, match=r"model_poisoning\.type=model_replacement uploads the malicious clients' own "
                                          r"poisoned updates, but attack\.type=none"):
        load_config(overrides=["model_poisoning.type=model_replacement", "attack.type=none"])
