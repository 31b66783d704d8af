"""norm_clipping, rlr, rfa and centered_clipping: cases worked by hand, randomised comparisons
with direct transcriptions of the papers' formulas (and of the RFA authors' code) in plain
numpy loops, every setting refused at bad values, and short runs on both engines.

The comparison with the peer library ByzFL is in test_aggregators_byzfl.py."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from sim import reporting, rng, runner
from sim.config import load_config
from sim.errors import ConfigError
from sim.server.base import AggregationContext
from sim.server.centered_clipping import CenteredClipping
from sim.server.norm_clipping import NormClipping
from sim.server.registry import AGGREGATORS, build_aggregator
from sim.server.rfa import RFA
from sim.server.rlr import RLR

RULES = ("norm_clipping", "rlr", "rfa", "centered_clipping")
CASES = 1000


def context(round: int = 0, seed: int = 0, center=None) -> AggregationContext:
    return AggregationContext(round=round, generator=rng.torch_stream(seed, round, rng.AGGREGATION),
                              last_global_update=center)


# ---------------------------------------------------------------------------------------------
# worked by hand


def test_norm_clipping_scales_rows_above_the_bound_and_averages():
    # clip 2: (3, 4) has norm 5 -> (3, 4) * 2/5 = (1.2, 1.6); (0, 1) has norm 1 and stays.
    # mean: (0.6, 1.3)
    result = NormClipping(clip=2.0)(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), context())
    assert torch.allclose(result.update, torch.tensor([0.6, 1.3]))
    assert result.kept == [0, 1]


def test_norm_clipping_leaves_a_zero_row_zero():
    result = NormClipping(clip=1.0)(torch.tensor([[0.0, 0.0], [0.0, 4.0]]), context())
    assert torch.allclose(result.update, torch.tensor([0.0, 0.5]))  # (0 + 1) / 2


def test_norm_clipping_noise_is_the_rounds_aggregation_stream():
    updates = torch.tensor([[3.0, 4.0, 0.0], [0.0, 1.0, 0.0]])
    clean = NormClipping(clip=2.0)(updates, context()).update
    noisy = NormClipping(clip=2.0, noise_std=0.5)(updates, context(round=4, seed=7)).update
    expected_noise = 0.5 * torch.randn(3, generator=rng.torch_stream(7, 4, rng.AGGREGATION))
    assert torch.allclose(noisy - clean, expected_noise, atol=1e-6)
    again = NormClipping(clip=2.0, noise_std=0.5)(updates, context(round=4, seed=7)).update
    assert torch.equal(noisy, again)
    other_round = NormClipping(clip=2.0, noise_std=0.5)(updates, context(round=5, seed=7)).update
    assert not torch.equal(noisy, other_round)


def test_rlr_keeps_the_sign_where_enough_signs_agree_and_flips_it_elsewhere():
    updates = torch.tensor([[1.0, 1.0, 0.0], [2.0, -1.0, 0.0], [3.0, -2.0, 5.0], [-1.0, 4.0, 3.0]])
    # coordinate 0: signs + + + -  -> |2| >= 2, mean (1 + 2 + 3 - 1)/4 = 1.25 kept
    # coordinate 1: signs + - - +  -> |0| <  2, mean (1 - 1 - 2 + 4)/4 = 0.5 -> -0.5
    # coordinate 2: signs 0 0 + +  -> |2| >= 2 (sign(0) = 0), mean 8/4 = 2 kept
    result = RLR(threshold=2)(updates)
    assert torch.allclose(result.update, torch.tensor([1.25, -0.5, 2.0]))
    assert result.kept == [0, 1, 2, 3]
    # threshold 3: coordinate 2's agreement 2 < 3 -> -2; coordinate 0's 2 < 3 -> -1.25
    assert torch.allclose(RLR(threshold=3)(updates).update, torch.tensor([-1.25, -0.5, -2.0]))


def test_rfa_one_weiszfeld_step_from_the_mean():
    # 1-D points 0, 1, 10: mean 11/3; distances 11/3, 8/3, 19/3; weights 3/11, 3/8, 3/19;
    # z1 = (3/8 * 1 + 3/19 * 10) / (3/11 + 3/8 + 3/19) = (99/152) / (449/1672) = 1089/449
    points = torch.tensor([[0.0], [1.0], [10.0]])
    result = RFA(iterations=1, ftol=0.0)(points)
    assert result.update.item() == pytest.approx(1089 / 449, rel=1e-6)
    assert result.kept == [0, 1, 2]


def test_rfa_converges_to_the_median_in_one_dimension():
    points = torch.tensor([[0.0], [1.0], [10.0]])
    assert RFA(iterations=200, ftol=0.0).__call__(points).update.item() == pytest.approx(1.0, abs=1e-4)


def test_rfa_stops_when_the_objective_stops_improving():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    rule = RFA(iterations=50, ftol=1e-3)
    rule(points)
    assert 1 <= rule.steps_run < 50
    never = RFA(iterations=50, ftol=0.0)
    never(points)
    assert never.steps_run == 50


def test_rfa_from_zero_takes_its_first_step_from_the_origin():
    # start zero: distances 1 and 3 from 0; weights 1, 1/3; z1 = (1 * 1 + 3 * 1/3) / (4/3) = 1.5
    result = RFA(iterations=1, ftol=0.0, start="zero")(torch.tensor([[1.0], [3.0]]))
    assert result.update.item() == pytest.approx(1.5, rel=1e-6)


def test_centered_clipping_clips_around_zero_in_round_zero():
    # tau 2, center 0: (3, 4) -> (1.2, 1.6); (0, 1) stays; v1 = mean = (0.6, 1.3)
    result = CenteredClipping(tau=2.0)(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), context())
    assert torch.allclose(result.update, torch.tensor([0.6, 1.3]))


def test_centered_clipping_clips_around_the_previous_global_update():
    # center (1, 1): differences (2, 3), norm sqrt(13) -> (4, 6)/sqrt(13); (-1, 0), norm 1, stays.
    # v1 = (1, 1) + mean = (1 + (4/sqrt(13) - 1)/2, 1 + 3/sqrt(13))
    result = CenteredClipping(tau=2.0)(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), context(center=torch.tensor([1.0, 1.0])))
    root = math.sqrt(13)
    assert torch.allclose(result.update, torch.tensor([1 + (4 / root - 1) / 2, 1 + 3 / root]))


def test_centered_clipping_with_a_large_radius_is_the_mean():
    updates = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    result = CenteredClipping(tau=1e6)(updates, context(center=torch.full((5,), 3.0)))
    assert torch.allclose(result.update, updates.mean(dim=0), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# direct transcriptions (float64 numpy, loops over rows and coordinates)


def norm_clipping_oracle(x: np.ndarray, clip: float) -> np.ndarray:
    """Sun et al.: Delta = (1/n) sum_k Delta_k / max(1, ||Delta_k||_2 / M)."""
    total = np.zeros(x.shape[1])
    for row in x:
        norm = math.sqrt(sum(float(v) * float(v) for v in row))
        total += row / max(1.0, norm / clip)
    return total / x.shape[0]


def rlr_oracle(x: np.ndarray, threshold: int) -> np.ndarray:
    """Ozdayi et al.: eta_j = eta if |sum_k sgn(Delta_k,j)| >= theta else -eta (eta = 1), times the mean."""
    n, d = x.shape
    out = np.zeros(d)
    for j in range(d):
        signs = sum(int(np.sign(x[i, j])) for i in range(n))
        rate = 1.0 if abs(signs) >= threshold else -1.0
        out[j] = rate * sum(float(x[i, j]) for i in range(n)) / n
    return out


def rfa_oracle(x: np.ndarray, nu: float, maxiter: int, ftol: float, start: str):
    """The smoothed Weiszfeld loop of the RFA authors' code (geometric_median_update), alphas 1/n.

    Returns every iterate and, per step, the objective and how far the stopping test was from
    flipping, relative to the objective."""
    n = x.shape[0]
    alphas = np.full(n, 1.0 / n)

    def objective(z):
        return sum(a * np.linalg.norm(z - p) for a, p in zip(alphas, x))

    median = sum(a * p for a, p in zip(alphas, x)) if start == "mean" else np.zeros(x.shape[1])
    value = objective(median)
    iterates, margins, values = [median], [], []
    for _ in range(maxiter):
        weights = np.array([a / max(nu, np.linalg.norm(median - p)) for a, p in zip(alphas, x)])
        weights = weights / weights.sum()
        median = sum(w * p for w, p in zip(weights, x))
        previous, value = value, objective(median)
        iterates.append(median)
        margins.append((abs(previous - value) - ftol * value) / max(value, 1e-300))  # relative to F
        values.append(value)
        if abs(previous - value) < ftol * value:
            break
    return iterates, margins, values


def centered_clipping_oracle(x: np.ndarray, center: np.ndarray, tau: float, iterations: int) -> np.ndarray:
    """Karimireddy et al.: v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) min(1, tau / ||x_i - v_l||)."""
    v = center.astype(np.float64).copy()
    for _ in range(iterations):
        step = np.zeros_like(v)
        for row in x:
            difference = row - v
            norm = np.linalg.norm(difference)
            step += difference * (min(1.0, tau / norm) if norm > 0 else 1.0)
        v = v + step / x.shape[0]
    return v


def random_updates(generator: np.random.Generator) -> np.ndarray:
    """Rows of assorted shapes and scales, with exact ties: repeated rows, zero rows, small
    integer values (equal signs and zeros), a far outlier."""
    n = int(generator.integers(1, 16))
    d = int(generator.integers(1, 40))
    scale = float(10.0 ** generator.uniform(-3, 2))
    kind = generator.integers(0, 4)
    if kind == 0:
        x = generator.normal(size=(n, d)) * scale
    elif kind == 1:
        x = generator.integers(-2, 3, size=(n, d)).astype(np.float64)
    elif kind == 2:
        x = generator.normal(size=(n, d)) * scale
        x[generator.integers(0, n)] *= 100  # an outlier
    else:
        base = generator.normal(size=(1, d)) * scale
        x = np.repeat(base, n, axis=0)
        x[: generator.integers(0, n + 1)] = 0.0  # repeated rows and zero rows
    return x.astype(np.float32)


def close(got: torch.Tensor, expected: np.ndarray, x: np.ndarray, rtol: float = 2e-5) -> bool:
    scale = max(1.0, float(np.abs(x).max(initial=0.0)))
    return np.allclose(got.double().numpy(), expected, rtol=rtol, atol=rtol * scale)


def test_norm_clipping_matches_the_formula_on_random_cases():
    generator = np.random.default_rng(0)
    for case in range(CASES):
        x = random_updates(generator)
        clip = float(10.0 ** generator.uniform(-3, 2))
        got = NormClipping(clip=clip)(torch.from_numpy(x), context()).update
        assert close(got, norm_clipping_oracle(x.astype(np.float64), clip), x), case


def test_rlr_matches_the_formula_on_random_cases():
    generator = np.random.default_rng(1)
    for case in range(CASES):
        x = random_updates(generator)
        threshold = int(generator.integers(0, x.shape[0] + 2))
        got = RLR(threshold=threshold)(torch.from_numpy(x)).update
        assert close(got, rlr_oracle(x.astype(np.float64), threshold), x), case


def test_rfa_matches_the_authors_weiszfeld_loop_on_random_cases():
    generator = np.random.default_rng(2)
    borderline = 0
    for case in range(CASES):
        x = random_updates(generator)
        nu = float(10.0 ** generator.uniform(-6, 0))
        iterations = int(generator.integers(1, 8))
        ftol = [0.0, 1e-6, 1e-3, 1e-1][int(generator.integers(0, 4))]
        start = ["mean", "zero"][int(generator.integers(0, 2))]
        rule = RFA(nu=nu, iterations=iterations, ftol=ftol, start=start)
        got = rule(torch.from_numpy(x)).update
        iterates, margins, values = rfa_oracle(x.astype(np.float64), nu, iterations, ftol, start)
        if rule.steps_run != len(iterates) - 1:
            every_step, _, _ = rfa_oracle(x.astype(np.float64), nu, iterations, 0.0, start)
            # Only where the stopping test was within float32 rounding of flipping (relative to
            # the objective, or the objective itself at rounding level: every row at the
            # estimate) may the step counts differ.
            step = min(rule.steps_run, len(iterates) - 1)
            rounding_level = 1e-6 * max(1.0, float(np.abs(x).max()))
            assert abs(margins[step - 1]) < 1e-5 or values[step - 1] < rounding_level, case
            borderline += 1
            iterates = every_step
        assert close(got, iterates[rule.steps_run], x, rtol=1e-4), case
    assert borderline <= CASES // 100


def test_centered_clipping_matches_the_formula_on_random_cases():
    generator = np.random.default_rng(3)
    for case in range(CASES):
        x = random_updates(generator)
        d = x.shape[1]
        center = None if generator.integers(0, 4) == 0 else (x[generator.integers(0, x.shape[0])] if generator.integers(0, 3) == 0
                                                             else generator.normal(size=d).astype(np.float32))
        tau = float(10.0 ** generator.uniform(-3, 2))
        iterations = int(generator.integers(1, 5))
        got = CenteredClipping(tau=tau, iterations=iterations)(
            torch.from_numpy(x), context(center=None if center is None else torch.from_numpy(center))).update
        start = np.zeros(d) if center is None else center.astype(np.float64)
        expected = centered_clipping_oracle(x.astype(np.float64), start, tau, iterations)
        assert close(got, expected, np.concatenate([x, start[None].astype(np.float32)]), rtol=1e-4), case


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
@pytest.mark.parametrize("name", RULES)
def test_each_rule_gives_the_same_result_on_the_gpu(name):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(37, 3001, generator=generator)
    x[:5] += 2.0
    center = torch.randn(3001, generator=generator) * 0.1
    settings = {"norm_clipping": {"clip": 5.0, "noise_std": 0.01}}.get(name)
    rule = build_aggregator({"aggregator": name, name: settings}, 37, 100, 10)
    cpu = rule(x, context(round=3, center=center)).update
    gpu = rule(x.cuda(), context(round=3, center=center.cuda())).update
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# settings


def build(name: str, settings: dict | None = None, f=None, clients_per_round: int = 10):
    return build_aggregator({"aggregator": name, "f": f, name: settings}, clients_per_round, 100, 25)


def test_defaults_build_and_rlr_threshold_follows_server_f():
    assert vars(build("norm_clipping")) == {"clip": 3.0, "noise_std": 0.0}
    assert build("rlr").threshold == 4  # server.f = null -> ceil(10 * 25 / 100) = 3 -> 3 + 1
    assert build("rlr", f=1).threshold == 2
    assert build("rlr", {"threshold": 7}, f=1).threshold == 7
    rule = build("rfa")
    assert (rule.nu, rule.iterations, rule.ftol, rule.start) == (1e-5, 4, 1e-6, "mean")
    assert vars(build("centered_clipping")) == {"tau": 10.0, "iterations": 1}


@pytest.mark.parametrize(
    "name, settings, f, field",
    [
        ("norm_clipping", {"clip": 0.0}, None, "server.norm_clipping.clip=0.0"),
        ("norm_clipping", {"clip": -1.0}, None, "server.norm_clipping.clip=-1.0"),
        ("norm_clipping", {"clip": math.inf}, None, "server.norm_clipping.clip=inf"),
        ("norm_clipping", {"noise_std": -0.1}, None, "server.norm_clipping.noise_std=-0.1"),
        ("norm_clipping", {"noise_std": "a"}, None, "server.norm_clipping.noise_std='a'"),
        ("rlr", {"threshold": -1}, None, "server.rlr.threshold=-1"),
        ("rlr", {"threshold": 1.5}, None, "server.rlr.threshold=1.5"),
        ("rlr", {"threshold": 11}, None, "server.rlr.threshold=11"),
        ("rlr", None, 10, r"server.rlr.threshold=11 \(server.rlr.threshold=null resolves to server.f \+ 1"),
        ("rlr", None, -1, "server.f=-1"),
        ("rfa", {"nu": 0.0}, None, "server.rfa.nu=0.0"),
        ("rfa", {"iterations": 0}, None, "server.rfa.iterations=0"),
        ("rfa", {"iterations": 1001}, None, "server.rfa.iterations=1001"),
        ("rfa", {"ftol": -1e-6}, None, "server.rfa.ftol=-1e-06"),
        ("rfa", {"start": "median"}, None, "server.rfa.start='median'"),
        ("centered_clipping", {"tau": 0.0}, None, "server.centered_clipping.tau=0.0"),
        ("centered_clipping", {"tau": -2.0}, None, "server.centered_clipping.tau=-2.0"),
        ("centered_clipping", {"iterations": 0}, None, "server.centered_clipping.iterations=0"),
        ("centered_clipping", {"iterations": True}, None, "server.centered_clipping.iterations=True"),
    ],
)
def test_bad_settings_are_refused_naming_the_value_and_the_fix(name, settings, f, field):
    with pytest.raises(ConfigError, match=field) as error:
        build(name, settings, f=f)
    assert "fix:" in str(error.value)


def test_a_misspelt_setting_is_refused_with_the_names_allowed():
    with pytest.raises(ConfigError, match="allowed: nu, iterations, ftol, start"):
        build("rfa", {"iteration": 3})


def test_settings_reach_the_rule_through_the_configuration():
    cfg = load_config(overrides=["server.aggregator=rfa", "server.rfa.start=zero", "server.rfa.iterations=7"])
    assert (cfg.server.rfa.start, cfg.server.rfa.iterations) == ("zero", 7)
    with pytest.raises(ConfigError, match="server.centered_clipping.tau"):
        load_config(overrides=["server.aggregator=centered_clipping", "server.centered_clipping.tau=0"])


# ---------------------------------------------------------------------------------------------
# whole runs on both engines

RUN = [
    "data.dataset=synthetic",
    "data.synthetic_train_size=200",
    "data.synthetic_test_size=100",
    "model=mlp",
    "clients.num_clients=8",
    "clients.num_malicious=2",
    "clients.clients_per_round=5",
    "selection.schedule=fixed",
    "selection.fixed_malicious=2",
    "training.local_epochs=1",
    "training.lr=0.1",
    "attack.type=backdoor",
    "rounds=2",
]
SETTINGS = {
    "norm_clipping": ["server.norm_clipping.clip=0.5", "server.norm_clipping.noise_std=0.001"],
    "rlr": [],
    "rfa": [],
    "centered_clipping": ["server.centered_clipping.tau=0.5", "server.centered_clipping.iterations=2"],
}


@pytest.mark.parametrize("name", RULES)
def test_each_rule_runs_on_both_engines_with_the_same_selections(tmp_path, name):
    pytest.importorskip("leadfl_ext")
    rows = {}
    for engine in ("sequential", "batched"):
        cfg = load_config(overrides=[*RUN, f"server.aggregator={name}", *SETTINGS[name], f"engine={engine}"])
        runner.run(cfg, tmp_path / engine, progress=False)
        rows[engine] = reporting.read_metrics(tmp_path / engine)
    assert len(rows["sequential"]) == len(rows["batched"]) == 2
    for got, expected in zip(rows["batched"], rows["sequential"]):
        assert got["kept"] == expected["kept"] and got["selected"] == expected["selected"]
        assert got["aggregate_rejected"] == expected["aggregate_rejected"] == 0
        assert got["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-3)



def metrics_rows(folder):
    with open(folder / "metrics.csv", newline="") as stream:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(stream)]


@pytest.mark.parametrize("name", ["centered_clipping", "norm_clipping"])
def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path, name):
    # centered_clipping's center is the previous global update, which the checkpoint carries;
    # norm_clipping's noise comes from the round's stream.
    pytest.importorskip("leadfl_ext")
    settings = [*RUN, f"server.aggregator={name}", *SETTINGS[name]]
    runner.run(load_config(overrides=[*settings, "rounds=3"]), tmp_path / "straight", progress=False)
    runner.run(load_config(overrides=[*settings, "rounds=2"]), tmp_path / "stopped", progress=False)
    runner.run(load_config(overrides=[*settings, "rounds=3"]), tmp_path / "stopped", resume=True, progress=False)
    assert metrics_rows(tmp_path / "stopped") == metrics_rows(tmp_path / "straight")


def test_the_rules_are_registered():
    assert set(RULES) <= set(AGGREGATORS)
