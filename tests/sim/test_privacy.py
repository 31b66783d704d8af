"""Client-level DP: the noise scale worked by hand, clipping, the noise streams, the budget, where
the upload stage applies it, and Attack-DPFL's rescaling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sim.config import load_config
from sim.attacks.model_poisoning import AttackContext, AttackDPFL, AttackDPFLAdaptive
from sim.defenses.privacy import (
    GaussianPrivacy,
    clip_rows,
    effective_epsilon,
    gaussian_sigma,
    noise_generator,
    privacy_budget,
)
from sim.reporting import read_metrics
from sim.runner import run
from sim.uploads import UploadPipeline
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sigma_is_the_gaussian_mechanism_formula():
    # sqrt(2 ln(1.25 / 1e-5)) = sqrt(2 * 11.736069) = 4.844804; clip 1, epsilon 1 -> 4.844804
    assert gaussian_sigma(1.0, 1e-5, 1.0) == pytest.approx(4.844804, rel=1e-6)
    # Linear in the clip, inverse in epsilon: clip 2, epsilon 4 -> half of that.
    assert gaussian_sigma(4.0, 1e-5, 2.0) == pytest.approx(4.844804 / 2, rel=1e-6)


def test_rdp_order_reproduces_the_robust_dpfl_code():
    # computing_sigma(alpha=1.2, gamma=5, norm=3) with delta 1e-8:
    #   epsilon' = 5 - ln(1e-8) / 0.2 = 5 + 92.103404 = 97.103404
    #   sigma = sqrt(2 ln(1.25e8)) * 3 / 97.103404 = 6.106369 * 3 / 97.103404 = 0.188657
    assert effective_epsilon(5.0, 1e-8, 1.2) == pytest.approx(97.103404, rel=1e-7)
    assert gaussian_sigma(5.0, 1e-8, 3.0, rdp_order=1.2) == pytest.approx(0.188657, rel=1e-5)
    assert effective_epsilon(5.0, 1e-8) == 5.0


def test_clip_shortens_long_rows_only():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    assert torch.allclose(clip_rows(rows, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


def test_privatize_clips_then_adds_the_clients_own_noise():
    mechanism = GaussianPrivacy(clip=1.0, epsilon=1.0, delta=1e-5)
    rows = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.1, 0.0]])
    noisy = mechanism.privatize(rows, [noise_generator(0, 7, 2), noise_generator(0, 4, 2)])
    expected_noise = torch.randn(3, generator=noise_generator(0, 7, 2)) * mechanism.sigma
    assert torch.allclose(noisy[0], torch.tensor([0.6, 0.8, 0.0]) + expected_noise)
    # Client 4's noise is its own stream, whatever row it sits in.
    alone = mechanism.privatize(rows[1:], [noise_generator(0, 4, 2)])
    assert torch.equal(alone[0], noisy[1])


def test_noise_streams_differ_between_clients_rounds_and_seeds():
    draws = {key: torch.randn(4, generator=noise_generator(*key)) for key in [(0, 1, 1), (0, 2, 1), (0, 1, 2), (1, 1, 1)]}
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])


def test_budget_reports_sigma_and_the_composed_total():
    section = SimpleNamespace(type="gaussian", clip=1.0, epsilon=2.0, delta=1e-5, rdp_order=None)
    budget = privacy_budget(section, [["1", "2"], ["2", "3"], ["2", "5"]])
    assert budget["sigma"] == pytest.approx(4.844804 / 2, rel=1e-6)
    # client 2 uploaded in all three rounds: 3 * epsilon, 3 * delta by basic composition
    assert budget["max_uploads_per_client"] == 3
    assert budget["epsilon_total_basic_composition"] == pytest.approx(6.0)
    assert budget["delta_total_basic_composition"] == pytest.approx(3e-5)
    assert privacy_budget(SimpleNamespace(type="none"), [["1"]]) is None


# ---------------------------------------------------------------------------------------------
# the upload stage


def pipeline(*extra):
    cfg = load_config(overrides=["privacy.type=gaussian", "privacy.clip=1.0", "privacy.epsilon=1.0", "privacy.delta=1e-5", *extra])
    return UploadPipeline(cfg, malicious=[5], num_parameters=3)


def test_dp_applies_to_every_client_when_no_model_poisoning_is_configured():
    uploads = pipeline("attack.type=backdoor")
    updates = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    noisy = uploads(updates, clients=[1, 5], round=0, global_params=torch.zeros(3))
    for row, client, clipped in ((0, 1, [0.6, 0.8, 0.0]), (1, 5, [0.0, 0.0, 1.0])):
        noise = torch.randn(3, generator=noise_generator(0, client, 0)) * uploads.privacy.sigma
        assert torch.allclose(noisy[row], torch.tensor(clipped) + noise)
    assert torch.equal(updates, torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]))  # input untouched


def test_under_attack_dpfl_only_the_benign_rows_are_noised_and_the_malicious_row_is_rescaled():
    uploads = pipeline("attack.type=backdoor", "model_poisoning.type=attack_dpfl")
    updates = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    result = uploads(updates, clients=[1, 5], round=0, global_params=torch.zeros(3))
    sigma = uploads.privacy.sigma
    benign_noise = torch.randn(3, generator=noise_generator(0, 1, 0)) * sigma
    assert torch.allclose(result[0], torch.tensor([0.6, 0.8, 0.0]) + benign_noise)
    # Client 5's would-be DP upload: (0, 0, 1) + its noise; it sends (0, 0, 2) rescaled to that norm.
    would_be = torch.tensor([0.0, 0.0, 1.0]) + torch.randn(3, generator=noise_generator(0, 5, 0)) * sigma
    assert torch.allclose(result[1], torch.tensor([0.0, 0.0, 1.0]) * would_be.norm())


def test_attack_dpfl_adaptive_removes_its_coordinate_mean_before_rescaling():
    # G = (1, 2, 3): mean 2, G - mean = (-1, 0, 1), unit (-1, 0, 1) / sqrt(2).
    mechanism = GaussianPrivacy(clip=1.0, epsilon=1.0, delta=1e-5)
    updates = torch.tensor([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
    ctx = AttackContext(round=3, global_params=torch.zeros(3), last_global_update=None,
                        generator=torch.Generator(), clients=[0, 9], seed=2, privacy=mechanism)
    malicious = torch.tensor([False, True])
    target = mechanism.privatize(updates[1:], [noise_generator(2, 9, 3)]).norm()
    adaptive = AttackDPFLAdaptive()(updates, malicious, ctx)[1]
    assert torch.allclose(adaptive, torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2) * target, atol=1e-6)
    assert abs(float(adaptive.mean())) < 1e-6  # Robust-DPFL's score is zero
    plain = AttackDPFL()(updates, malicious, ctx)[1]
    assert torch.allclose(plain, torch.tensor([1.0, 2.0, 3.0]) / math.sqrt(14) * target, atol=1e-6)
    assert torch.allclose(plain.norm(), adaptive.norm())


def test_pipeline_without_dp_or_attack_returns_the_updates_as_they_are():
    cfg = load_config()
    uploads = UploadPipeline(cfg, malicious=[1], num_parameters=2)
    updates = torch.ones(2, 2)
    assert uploads(updates, [0, 1], 0, torch.zeros(2)) is updates and not uploads.active
    uploads.observe(torch.ones(2))
    assert uploads.state_dict() == {"last_global_update": None, "attack": None}


# ---------------------------------------------------------------------------------------------
# end to end on synthetic data

TINY = [
    *tiny_synthetic(),
    "attack.type=backdoor",
    "attack.backdoor.blend=fixed",
    "eval.test_size=50",
    "privacy.type=gaussian",
    "privacy.clip=1.0",
    "privacy.epsilon=5",
    "privacy.rdp_order=1.2",
]




def test_dp_run_end_to_end_reports_its_budget_and_robust_dpfl_drops_attack_dpfl(tmp_path):
    cfg = load_config(overrides=[*TINY, "rounds=2", "server.aggregator=robust_dpfl", "model_poisoning.type=attack_dpfl"])
    summary = run(cfg, tmp_path / "run", progress=False)
    privacy = summary["privacy"]
    assert privacy["sigma"] == pytest.approx(gaussian_sigma(5.0, 1e-8, 1.0, rdp_order=1.2))
    assert privacy["epsilon"] == 5.0 and privacy["rdp_order"] == 1.2
    assert privacy["max_uploads_per_client"] >= 1
    assert summary["settings"]["privacy.epsilon"] == 5.0
    # The rescaled noise-free updates mostly carry a coordinate mean far above the noise's, so
    # robust_dpfl keeps a smaller share of them than of the benign uploads.
    kept = {"malicious": [0, 0], "benign": [0, 0]}
    for row in read_metrics(tmp_path / "run"):
        malicious = set(row["malicious_ids"].split())
        for client in row["selected"].split():
            tally = kept["malicious" if client in malicious else "benign"]
            tally[0] += client in row["kept"].split()
            tally[1] += 1
    assert kept["malicious"][0] / kept["malicious"][1] < kept["benign"][0] / kept["benign"][1]
