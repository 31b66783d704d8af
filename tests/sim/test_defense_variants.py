"""The LeadFL ablation variants (`drift`, `curvature`), `client_defense.scope` and `original`'s
`momentum_reset`, each against a step worked by hand (docs/algorithms.md §1.5)."""

from types import SimpleNamespace

import pytest
import torch

from sim.defenses.client import (
    LEADFL_VARIANTS,
    LeadFLCurvature,
    LeadFLDrift,
    LeadFLHessian,
    LeadFLOriginal,
    build_update_rule,
    scope_flags,
)
from sim.errors import ConfigError

pytest.importorskip("leadfl_ext")
pytestmark = pytest.mark.usefixtures("one_thread")

LR = 0.1
# A conv kernel [2, 1, 1, 1] per client, its bias [2], a linear weight [2, 2].
NAMES = ["conv.weight", "conv.bias", "fc.weight"]
SHAPES = [(2, 1, 1, 1), (2,), (2, 2)]


def settings(variant="hessian", alpha=0.5, q=0.2, scope=None, momentum_reset="round"):
    return SimpleNamespace(type="leadfl", noise_scale=0.2, variant=variant, alpha=alpha, q=q, scope=scope,
                           momentum_reset=momentum_reset)


def rule(variant, momentum=0.0, **options):
    return build_update_rule(settings(variant, **options), momentum=momentum, names=NAMES, shapes=SHAPES)


def one_row(values):
    """Stacked tensors of one client (row) with the given flat values per tensor, float64."""
    return [torch.tensor(v, dtype=torch.float64).reshape(1, *shape) for v, shape in zip(values, SHAPES)]


W = [[1.0, -1.0], [0.5, 0.0], [1.0, 2.0, 3.0, 4.0]]
G = [[0.5, 1.0], [1.0, -2.0], [0.0, 1.0, -1.0, 2.0]]
# g~ - g: 0.3 and 2.0 on the conv, -0.1 and 0.05 on the bias, 0, 0.9, -0.9, 1.5 on fc.
G_LOOK = [[0.8, 3.0], [0.9, -1.95], [0.0, 1.9, -1.9, 3.5]]


def step(variant, **options):
    params = one_row(W)
    r = rule(variant, **options)
    r.start(params, [True], clients=[0], seed=0, round=0)
    r.step(one_row(G), one_row(G_LOOK), [True], [0], LR)
    return [p.reshape(-1).tolist() for p in params]


def close(got, want):
    for k, (a, b) in enumerate(zip(got, want)):
        assert a == pytest.approx(b, abs=1e-12), f"tensor {k}: {a} != {b}"


def test_the_new_variants_are_registered():
    assert LEADFL_VARIANTS["drift"] is LeadFLDrift and LEADFL_VARIANTS["curvature"] is LeadFLCurvature
    assert not LeadFLDrift.needs_lookahead and LeadFLCurvature.needs_lookahead


def test_drift_by_hand():
    # W - lr*g - lr*alpha*q on every element: lr*alpha*q = 0.1*0.5*0.2 = 0.01.
    close(step("drift"), [
        [1 - 0.05 - 0.01, -1 - 0.1 - 0.01],
        [0.5 - 0.1 - 0.01, 0.0 + 0.2 - 0.01],
        [1 - 0.0 - 0.01, 2 - 0.1 - 0.01, 3 + 0.1 - 0.01, 4 - 0.2 - 0.01],
    ])


def test_curvature_by_hand():
    # R = clamp(-(g~ - g), -0.2, 0.2): conv -0.2, -0.2; bias 0.1, -0.05; fc 0, -0.2, 0.2, -0.2.
    # W - lr*g - lr*alpha*R with lr*alpha = 0.05.
    close(step("curvature"), [
        [1 - 0.05 + 0.01, -1 - 0.1 + 0.01],
        [0.5 - 0.1 - 0.005, 0.0 + 0.2 + 0.0025],
        [1 - 0.0 - 0.0, 2 - 0.1 + 0.01, 3 + 0.1 - 0.01, 4 - 0.2 + 0.01],
    ])


def test_hessian_by_hand_for_comparison():
    # R = clamp(1 - (g~ - g), -0.2, 0.2): conv 0.2, -0.2; bias 0.2, 0.2; fc 0.2, 0.1, 0.2, -0.2.
    close(step("hessian"), [
        [1 - 0.05 - 0.01, -1 - 0.1 + 0.01],
        [0.5 - 0.1 - 0.01, 0.0 + 0.2 - 0.01],
        [1 - 0.0 - 0.01, 2 - 0.1 - 0.005, 3 + 0.1 - 0.01, 4 - 0.2 + 0.01],
    ])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_drift_equals_hessian_where_hessians_r_sits_at_plus_q(dtype):
    # 1 - (g~ - g) >= q everywhere: R = +q, so hessian is SGD plus the uniform push, bit for bit.
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 1, 5, 5), (3, 4), (3, 10, 7)]
    names = ["conv.weight", "conv.bias", "fc.weight"]
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    # g~ - g in [-5, 0.79]: 1 - (g~ - g) in [0.21, 6] >= q = 0.2.
    lookahead = [g + (torch.rand(g.shape, generator=gen, dtype=torch.float64) * 5.79 - 5).to(dtype) for g in grads]
    assert all(bool((1 - (la - g) >= 0.2).all()) for la, g in zip(lookahead, grads))
    results = {}
    for variant in ("hessian", "drift"):
        stacked = [p.clone() for p in params]
        r = build_update_rule(settings(variant), momentum=0.3, names=names, shapes=[s[1:] for s in shapes])
        r.start(stacked, [True, True, False], clients=[0, 1, 2], seed=0, round=0)
        for position in range(3):
            r.step(grads, lookahead, [True, True, True], [position] * 3, LR)
        results[variant] = stacked
    for a, b in zip(results["hessian"], results["drift"]):
        assert torch.equal(a, b)
    # and where R = -q they differ (the test can fail):
    flipped = [g + 1.5 for g in grads]
    other = {}
    for variant in ("hessian", "drift"):
        stacked = [p.clone() for p in params]
        r = build_update_rule(settings(variant), momentum=0.0, names=names, shapes=[s[1:] for s in shapes])
        r.start(stacked, [True] * 3, clients=[0, 1, 2], seed=0, round=0)
        r.step(grads, flipped, [True] * 3, [0] * 3, LR)
        other[variant] = stacked
    assert not torch.equal(other["hessian"][0], other["drift"][0])


def test_undefended_rows_take_plain_sgd_under_drift_and_curvature():
    for variant in ("drift", "curvature"):
        params = [torch.ones(2, *s, dtype=torch.float64) for s in SHAPES]
        grads = [torch.full((2, *s), 0.5, dtype=torch.float64) for s in SHAPES]
        r = rule(variant)
        r.start(params, [True, False], clients=[0, 1], seed=0, round=0)
        r.step(grads, [g * 3 for g in grads], [True, True], [0, 0], LR)
        assert all(torch.equal(p[1], torch.full_like(p[1], 0.95)) for p in params), variant
        assert all(not torch.equal(p[0], torch.full_like(p[0], 0.95)) for p in params), variant


# -- scope -------------------------------------------------------------------------------------


def test_scope_flags():
    assert scope_flags("all", NAMES, SHAPES) == [True, True, True]
    assert scope_flags("weight", NAMES, SHAPES) == [True, False, True]
    assert scope_flags("conv", NAMES, SHAPES) == [True, False, False]
    assert scope_flags(["fc.weight", "conv.bias"], NAMES, SHAPES) == [False, True, True]
    with pytest.raises(ConfigError, match=r"'fc\.wieght'.*its parameters: conv\.weight, conv\.bias, fc\.weight"):
        scope_flags(["fc.wieght"], NAMES, SHAPES)
    with pytest.raises(ConfigError, match="allowed: all, weight, conv"):
        scope_flags("convs", NAMES, SHAPES)
    with pytest.raises(ConfigError, match="no convolution"):
        scope_flags("conv", ["fc.weight", "fc.bias"], [(2, 3), (2,)])


def test_hessian_scope_conv_regularises_only_the_conv_kernel():
    got = step("hessian", scope="conv")
    # conv as hessian; bias and fc plain SGD.
    close(got, [
        [1 - 0.05 - 0.01, -1 - 0.1 + 0.01],
        [0.5 - 0.1, 0.0 + 0.2],
        [1 - 0.0, 2 - 0.1, 3 + 0.1, 4 - 0.2],
    ])


def test_drift_and_paper_scope_lists_and_weight():
    close(step("drift", scope=["conv.bias"]), [
        [1 - 0.05, -1 - 0.1],
        [0.5 - 0.1 - 0.01, 0.0 + 0.2 - 0.01],
        [1 - 0.0, 2 - 0.1, 3 + 0.1, 4 - 0.2],
    ])
    close(step("curvature", scope="weight"), [
        [1 - 0.05 + 0.01, -1 - 0.1 + 0.01],
        [0.5 - 0.1, 0.0 + 0.2],
        [1 - 0.0 - 0.0, 2 - 0.1 + 0.01, 3 + 0.1 - 0.01, 4 - 0.2 + 0.01],
    ])
    # paper, first step (D = 0): R = clamp(1 - lr*g) = 0.2 everywhere here; scope conv only.
    close(step("paper", scope="conv"), [
        [1 - 0.05 - 0.01, -1 - 0.1 - 0.01],
        [0.5 - 0.1, 0.0 + 0.2],
        [1 - 0.0, 2 - 0.1, 3 + 0.1, 4 - 0.2],
    ])


def test_paper_scope_keeps_d_of_the_regularised_tensors_with_momentum():
    # Three steps with momentum: a regularised tensor's update depends only on its own D, so the
    # conv kernel moves under scope [conv.weight] exactly as under scope all (the D bookkeeping
    # of the subset path matches the whole path), and the others move differently.
    def run(scope):
        params = one_row(W)
        r = rule("paper", momentum=0.5, scope=scope)
        r.start(params, [True], clients=[0], seed=0, round=0)
        for position in range(3):
            r.step(one_row(G), None, [True], [position], LR)
        return params
    whole, mixed = run("all"), run(["conv.weight"])
    assert torch.allclose(mixed[0], whole[0], rtol=0, atol=1e-15)
    assert not torch.allclose(mixed[2], whole[2])


def test_original_scope_default_is_weight_and_all_adds_the_biases():
    default = rule("original")
    assert default.regularised == [True, False, True]
    assert rule("original", scope="all").regularised == [True, True, True]
    assert rule("hessian").regularised == [True, True, True]


# -- momentum_reset ----------------------------------------------------------------------------


def test_momentum_reset_never_carries_each_clients_buffer_into_its_next_round():
    # original, alpha 0 and q large: two momentum-SGD steps per round (no second step on the
    # epoch's first batch: steps at positions 0 and 0, one batch per epoch).
    def train_round(r, params, clients, grads):
        r.start(params, [True] * len(clients), clients=clients, seed=0, round=0)
        r.step(grads, None, [True] * len(clients), [0] * len(clients), LR)
        r.finish_rows(list(range(len(clients))))

    g = [torch.full((1, *s), 1.0, dtype=torch.float64) for s in SHAPES]
    results = {}
    for reset in ("round", "never"):
        r = rule("original", momentum=0.5, alpha=0.0, q=10.0, momentum_reset=reset)
        params = [torch.zeros(1, *s, dtype=torch.float64) for s in SHAPES]
        train_round(r, params, [7], g)        # round 1: v = 1, W = -0.1
        train_round(r, params, [7], g)        # round 2: v = 0.5*v_saved + 1
        results[reset] = params[0].reshape(-1)[0].item()
    assert results["round"] == pytest.approx(-0.2, abs=1e-15)          # v = 1 again
    assert results["never"] == pytest.approx(-0.1 - 0.15, abs=1e-15)   # v = 1.5


def test_momentum_store_is_per_client_and_round_trips_through_state():
    r = rule("original", momentum=0.5, alpha=0.0, q=10.0, momentum_reset="never")
    assert r.keeps_client_state
    params = [torch.zeros(2, *s, dtype=torch.float64) for s in SHAPES]
    grads = [torch.stack([torch.full(s, 1.0), torch.full(s, -2.0)]).double() for s in SHAPES]
    r.start(params, [True, False], clients=[3, 9], seed=0, round=0)
    r.step(grads, None, [True, True], [0, 0], LR)
    r.finish_rows([0, 1])
    state = r.client_state()
    assert sorted(state) == [3, 9]
    assert torch.equal(state[9]["momentum"][2], torch.full((2, 2), -2.0, dtype=torch.float64))  # a malicious row too
    other = rule("original", momentum=0.5, alpha=0.0, q=10.0, momentum_reset="never")
    other.load_client_state(state)
    assert all(torch.equal(a, b) for a, b in zip(other.client_state()[3]["momentum"], state[3]["momentum"]))
    assert rule("original", momentum=0.5).client_state() == {}


def test_momentum_reset_errors():
    with pytest.raises(ConfigError, match="variant=original only"):
        rule("hessian", momentum_reset="never")
    with pytest.raises(ConfigError, match="allowed: round, never"):
        rule("original", momentum_reset="sometimes")


# -- configuration -----------------------------------------------------------------------------


def test_variants_scope_and_momentum_reset_from_the_command_line():
    from sim.config import load_config

    for variant in ("drift", "curvature"):
        cfg = load_config(overrides=["client_defense.type=leadfl", f"client_defense.variant={variant}"])
        assert cfg.client_defense.variant == variant
    cfg = load_config(overrides=["client_defense.type=leadfl", "client_defense.scope=[layer1.0.weight,fc.weight]"])
    assert cfg.client_defense.scope == ["layer1.0.weight", "fc.weight"]
    cfg = load_config(overrides=["client_defense.type=leadfl", "client_defense.variant=original",
                                 "client_defense.momentum_reset=never"])
    assert cfg.client_defense.momentum_reset == "never"


def test_bad_scope_and_momentum_reset_are_config_errors_before_any_data():
    from sim.config import load_config

    with pytest.raises(ConfigError, match=r"'layer9\.weight'.*its parameters: layer1\.0\.weight, layer1\.0\.bias"):
        load_config(overrides=["client_defense.type=leadfl", "client_defense.scope=[layer9.weight]"])
    with pytest.raises(ConfigError, match=r"client_defense.scope = 'bias'.*allowed: all, weight, conv"):
        load_config(overrides=["client_defense.type=leadfl", "client_defense.scope=bias"])
    with pytest.raises(ConfigError, match=r"client_defense.scope=3 must be text or a non-empty list"):
        load_config(overrides=["client_defense.type=leadfl", "client_defense.scope=3"])
    with pytest.raises(ConfigError, match=r"no convolution"):
        load_config(overrides=["client_defense.type=leadfl", "client_defense.scope=conv", "model=mlp"])
    with pytest.raises(ConfigError, match=r"momentum_reset='sometimes' is not one of round, never"):
        load_config(overrides=["client_defense.momentum_reset=sometimes"])
    with pytest.raises(ConfigError, match=r"variant=original only"):
        load_config(overrides=["client_defense.type=leadfl", "client_defense.momentum_reset=never"])
    with pytest.raises(ConfigError, match=r"client_defense.variant='drfit' is not one of .*fix: --set client_defense.variant=drift"):
        load_config(overrides=["client_defense.type=leadfl", "client_defense.variant=drfit"])


def test_the_validation_build_draws_no_random_numbers():
    from sim.config import load_config

    torch.manual_seed(1)
    before = torch.get_rng_state()
    load_config(overrides=["client_defense.type=leadfl", "client_defense.scope=conv"])
    assert torch.equal(torch.get_rng_state(), before)
