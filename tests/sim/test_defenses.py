from types import SimpleNamespace

import pytest
import torch

from sim.defenses.client import (
    CLIENT_DEFENSES,
    FLWBC,
    LEADFL_VARIANTS,
    SGD,
    LaplaceNoise,
    LeadFLHessian,
    LeadFLOriginal,
    LeadFLPaper,
    build_update_rule,
    laplace_,
)
from sim.errors import ConfigError
from sim.rng import noise_generator

LR = 0.1
SCALE = 0.2
SEED, ROUND = 5, 2
NAMES = ["conv.weight", "conv.bias", "bn.weight", "bn.bias"]


def settings(kind="ldp", variant="hessian", noise_scale=SCALE, alpha=0.4, q=0.2):
    return SimpleNamespace(type=kind, noise_scale=noise_scale, variant=variant, alpha=alpha, q=q)


def laplace_draw(numel, generator):
    return laplace_(torch.empty(numel), SCALE, generator)


def client_noise(client, numel=8):
    return laplace_draw(numel, noise_generator(SEED, client, ROUND, "cpu"))


def rows(n):
    """Stacked toy parameters, one row per client: conv [2, 3], bias [2], BN scale [2], shift [2]."""
    return [torch.zeros(n, 2, 3), torch.zeros(n, 2), torch.ones(n, 2), torch.zeros(n, 2)]


def zero_grads(params):
    return [torch.zeros_like(p) for p in params]


def started(rule_class, params, defended, clients, **options):
    rule = rule_class(settings(**options), momentum=0.0, names=NAMES)
    rule.start(params, defended, clients=clients, seed=SEED, round=ROUND)
    return rule


def test_laplace_samples_have_the_laplace_moments_and_follow_the_generator():
    samples = laplace_draw(200_000, torch.Generator().manual_seed(0))
    assert torch.isfinite(samples).all()
    assert samples.mean().item() == pytest.approx(0.0, abs=0.005)
    assert samples.abs().mean().item() == pytest.approx(SCALE, rel=0.02)  # E|X| = b
    assert samples.var().item() == pytest.approx(2 * SCALE**2, rel=0.03)  # Var X = 2 b^2
    assert torch.equal(samples, laplace_draw(200_000, torch.Generator().manual_seed(0)))


def test_ldp_adds_lr_scaled_noise_to_weight_tensors_from_the_second_step_on():
    params = rows(1)
    rule = started(LaplaceNoise, params, [True], [4])
    rule.step(zero_grads(params), None, [True], [0], LR)  # the first step of an epoch adds nothing
    assert all(torch.equal(p, q) for p, q in zip(params, rows(1)))

    rule.step(zero_grads(params), None, [True], [1], LR)
    noise = client_noise(4)
    assert torch.allclose(params[0].reshape(-1), LR * noise[:6])
    assert torch.allclose(params[2].reshape(-1), 1.0 + LR * noise[6:])
    assert params[1].abs().sum().item() == 0.0 and params[3].abs().sum().item() == 0.0


def test_ldp_rows_draw_from_their_own_clients_streams_and_undefended_rows_get_none():
    params = rows(3)
    rule = started(LaplaceNoise, params, [True, False, True], [7, 8, 9])
    rule.step(zero_grads(params), None, [True, True, True], [1, 1, 1], LR)
    assert torch.allclose(params[0][0].reshape(-1), LR * client_noise(7)[:6])
    assert params[0][1].abs().sum().item() == 0.0  # a malicious row: no client defense
    assert torch.allclose(params[0][2].reshape(-1), LR * client_noise(9)[:6])


def test_flwbc_keeps_noise_only_where_the_gradient_changed_less_than_it():
    params = rows(1)
    rule = started(FLWBC, params, [True], [4])
    rule.step(zero_grads(params), None, [True], [0], LR)
    assert params[0].abs().sum().item() == 0.0

    # The conv weight's gradient jumps by 1e6 on its first row and stays on the second.
    params_before = [p.clone() for p in params]
    second = zero_grads(params)
    second[0][0, 0] = 1e6
    rule.step(second, None, [True], [1], LR)
    noise = client_noise(4)
    # The SGD step moved the jumped row by -lr * 1e6; the noise there is masked.
    assert torch.equal(params[0][0, 0], params_before[0][0, 0] - LR * 1e6)
    assert torch.allclose(params[0][0, 1], LR * noise[3:6])
    assert torch.allclose(params[2].reshape(-1), 1.0 + LR * noise[6:])
    assert params[1].abs().sum().item() == 0.0


def test_flwbc_compares_with_the_previous_step_not_the_epoch_start():
    params = rows(1)
    rule = started(FLWBC, params, [True], [0])
    jumped = [torch.full_like(p, 10.0) for p in params]  # 10 is far beyond any Laplace(0.2) draw

    def noise_added(grads, step_in_epoch):
        before = params[0].clone()
        rule.step(grads, None, [True], [step_in_epoch], LR)
        return params[0] - (before - LR * grads[0])

    noise_added(zero_grads(params), 0)
    assert noise_added(jumped, 1).abs().max().item() < 1e-6  # changed by 10: all noise masked
    assert (noise_added(jumped, 2).abs() > 1e-6).all()  # unchanged since step 1: all noise kept


def test_finished_rows_stay_where_they_are_under_every_rule():
    for rule_class in (SGD, LaplaceNoise, FLWBC, LeadFLHessian, LeadFLPaper, LeadFLOriginal):
        params = rows(2)
        rule = rule_class(settings("leadfl"), momentum=0.5, names=NAMES)
        rule.start(params, [True, True], clients=[0, 1], seed=SEED, round=ROUND)
        grads = [torch.randn_like(p) for p in params]
        rule.step(grads, grads, [True, True], [0, 0], LR)
        rule.step(grads, grads, [True, True], [1, 1], LR)
        frozen = [p[1].clone() for p in params]
        rule.finish_rows([1])
        for g in grads:
            g[1].zero_()
        rule.step(grads, grads, [True, False], [2, 0], LR)
        assert all(torch.equal(p[1], f) for p, f in zip(params, frozen)), rule_class.__name__


def test_leadfl_with_alpha_zero_is_momentum_sgd():
    torch.manual_seed(0)
    for rule_class in (LeadFLHessian, LeadFLPaper):
        plain, leadfl = rows(2), rows(2)
        sgd = SGD(settings("none"), momentum=0.3, names=NAMES)
        sgd.start(plain, [True, True], clients=[0, 1], seed=SEED, round=ROUND)
        rule = rule_class(settings("leadfl", alpha=0.0), momentum=0.3, names=NAMES)
        rule.start(leadfl, [True, True], clients=[0, 1], seed=SEED, round=ROUND)
        for step in range(3):
            grads = [torch.randn_like(p) for p in plain]
            sgd.step(grads, None, [True, True], [step, step], LR)
            rule.step(grads, grads, [True, True], [step, step], LR)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, leadfl)), rule_class.__name__


def test_build_update_rule_picks_by_type_and_variant_and_rejects_unknown_ones():
    assert type(build_update_rule(settings("none"), momentum=0.1, names=NAMES)) is SGD
    assert type(build_update_rule(settings("ldp"), momentum=0.1, names=NAMES)) is LaplaceNoise
    assert type(build_update_rule(settings("flwbc"), momentum=0.1, names=NAMES)) is FLWBC
    for variant, rule_class in LEADFL_VARIANTS.items():
        assert type(build_update_rule(settings("leadfl", variant), momentum=0.1, names=NAMES)) is rule_class
    assert list(CLIENT_DEFENSES) == ["none", "ldp", "flwbc", "leadfl"]
    with pytest.raises(ConfigError, match="none, ldp, flwbc, leadfl"):
        build_update_rule(settings("krum"), momentum=0.1, names=NAMES)
    with pytest.raises(ConfigError, match="hessian, paper, original"):
        build_update_rule(settings("leadfl", "exact"), momentum=0.1, names=NAMES)
    with pytest.raises(ConfigError, match="noise_scale"):
        build_update_rule(settings("ldp", noise_scale=-1.0), momentum=0.1, names=NAMES)
    with pytest.raises(ConfigError, match="client_defense.q"):
        build_update_rule(settings("leadfl", q=0.0), momentum=0.1, names=NAMES)
