from types import SimpleNamespace

import pytest
import torch

from sim.defenses.client import (
    FLWBCDefense,
    LaplaceNoiseDefense,
    NoClientDefense,
    build_client_defense,
    laplace_,
)
from sim.errors import ConfigError

LR = 0.1
SCALE = 0.2


def laplace_draw(numel, seed):
    return laplace_(torch.empty(numel), SCALE, torch.Generator().manual_seed(seed))


def toy_parameters():
    names = ["conv.weight", "conv.bias", "bn.weight", "bn.bias"]
    params = [torch.zeros(2, 3), torch.zeros(2), torch.ones(2), torch.zeros(2)]
    return names, params


def test_laplace_samples_have_the_laplace_moments_and_follow_the_generator():
    samples = laplace_draw(200_000, seed=0)
    assert torch.isfinite(samples).all()
    assert samples.mean().item() == pytest.approx(0.0, abs=0.005)
    assert samples.abs().mean().item() == pytest.approx(SCALE, rel=0.02)  # E|X| = b
    assert samples.var().item() == pytest.approx(2 * SCALE**2, rel=0.03)  # Var X = 2 b^2
    assert torch.equal(samples, laplace_draw(200_000, seed=0))


def test_ldp_adds_lr_scaled_noise_to_weight_tensors_from_the_second_step_on():
    names, params = toy_parameters()
    defense = LaplaceNoiseDefense(names, params, lr=LR, noise_scale=SCALE)
    defense.start_local_training(torch.Generator().manual_seed(3))
    grads = [torch.zeros_like(p) for p in params]
    defense.after_step(0, grads)  # the first step of an epoch adds nothing
    assert [p.tolist() for p in params] == [p.tolist() for p in toy_parameters()[1]]

    defense.after_step(1, grads)
    noise = laplace_draw(6 + 2, seed=3)
    assert torch.allclose(params[0].reshape(-1), LR * noise[:6])
    assert torch.allclose(params[2], 1.0 + LR * noise[6:])
    assert params[1].abs().sum().item() == 0.0 and params[3].abs().sum().item() == 0.0


def test_flwbc_keeps_noise_only_where_the_gradient_changed_less_than_it():
    names, params = toy_parameters()
    defense = FLWBCDefense(names, params, lr=LR, noise_scale=SCALE)
    defense.start_local_training(torch.Generator().manual_seed(3))
    first = [torch.zeros_like(p) for p in params]
    defense.after_step(0, first)
    assert params[0].abs().sum().item() == 0.0

    # The conv weight's gradient jumps by 1e6 on its first row and stays on the second.
    second = [torch.zeros_like(p) for p in params]
    second[0][0] = 1e6
    second[1].fill_(1e6)  # a bias: never noised whatever its gradient does
    defense.after_step(1, second)
    noise = laplace_draw(8, seed=3)
    assert params[0][0].abs().sum().item() == 0.0
    assert torch.allclose(params[0][1], LR * noise[3:6])
    assert torch.allclose(params[2], 1.0 + LR * noise[6:])
    assert params[1].abs().sum().item() == 0.0


def test_flwbc_compares_with_the_previous_step_not_the_epoch_start():
    names, params = toy_parameters()
    defense = FLWBCDefense(names, params, lr=LR, noise_scale=SCALE)
    defense.start_local_training(torch.Generator().manual_seed(0))
    jumped = [torch.full_like(p, 1e6) for p in params]
    defense.after_step(0, [torch.zeros_like(p) for p in params])
    defense.after_step(1, jumped)  # changed by 1e6: all noise masked
    assert params[0].abs().sum().item() == 0.0
    defense.after_step(2, jumped)  # unchanged since step 1: all noise kept
    assert (params[0] != 0).all()


def test_build_client_defense_picks_by_type_and_rejects_unknown_ones():
    names, params = toy_parameters()

    def section(kind, variant="hessian"):
        return SimpleNamespace(type=kind, noise_scale=0.2, variant=variant, alpha=0.4, q=0.2)

    assert isinstance(build_client_defense(section("none"), names, params, lr=LR), NoClientDefense)
    assert type(build_client_defense(section("ldp"), names, params, lr=LR)) is LaplaceNoiseDefense
    assert type(build_client_defense(section("flwbc"), names, params, lr=LR)) is FLWBCDefense
    assert isinstance(build_client_defense(section("leadfl"), names, params, lr=LR), NoClientDefense)
    with pytest.raises(ConfigError, match="none, ldp, flwbc, leadfl"):
        build_client_defense(section("krum"), names, params, lr=LR)
    with pytest.raises(ConfigError, match="hessian, paper, original"):
        build_client_defense(section("leadfl", variant="exact"), names, params, lr=LR)
    with pytest.raises(ConfigError, match="noise_scale"):
        LaplaceNoiseDefense(names, params, lr=LR, noise_scale=-1.0)
