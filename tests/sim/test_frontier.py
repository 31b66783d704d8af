"""The frontier of a many-seed comparison (sim.frontier, `leadfl-sim plot DIR --frontier KEY`)."""

from __future__ import annotations

import json
import math

import pytest

from sim.cli import main
from sim.errors import ConfigError
from sim.frontier import frontier_points, write_frontier

T_975_2 = 4.302652729911275  # Student t quantile, 2 degrees of freedom (3 seeds)


def _summary(main_accuracy, mean_backdoor, final_backdoor):
    return {"final_main_accuracy": main_accuracy, "mean_backdoor_accuracy": mean_backdoor,
            "final_backdoor_accuracy": final_backdoor}


def _comparison():
    """none, and hessian / drift at alpha 0.1 and 0.4, over seeds 0-2 (hand-chosen values)."""
    mains = {"none": [86.0, 85.0, 87.0], "hessian alpha 0.1": [84.0, 84.0, 85.0],
             "hessian alpha 0.4": [72.0, 70.0, 74.0], "drift alpha 0.4": [71.0, 71.0, 73.0],
             "drift alpha 0.1": [83.0, 85.0, 84.0]}
    backdoors = {"none": [40.0, 30.0, 50.0], "hessian alpha 0.1": [20.0, 25.0, 30.0],
                 "hessian alpha 0.4": [5.0, 7.0, 9.0], "drift alpha 0.4": [6.0, 7.0, 8.0],
                 "drift alpha 0.1": [21.0, 24.0, 30.0]}
    overrides = {"none": ["client_defense.type=none"]}
    for label in mains:
        if label != "none":
            variant, _, alpha = label.split()
            overrides[label] = ["client_defense.type=leadfl", f"client_defense.variant={variant}",
                                f"client_defense.alpha={alpha}", "client_defense.q=0.2"]
    return {
        "caption": "test", "seeds": [0, 1, 2], "base_config": {"attack": {"type": "backdoor"}},
        "variants": {label: {"overrides": overrides[label], "folder": label.replace(" ", "-"), "runs": {
            str(seed): {"folder": f"seed{seed}/x", "summary": _summary(mains[label][seed], backdoors[label][seed],
                                                                       backdoors[label][seed] / 2)}
            for seed in range(3)}} for label in mains},
    }


def test_points_are_paired_costs_and_backdoor_means_with_student_t_intervals():
    baseline, base_backdoor, points = frontier_points(_comparison(), "client_defense.alpha")
    assert baseline == "none" and base_backdoor.mean == pytest.approx(40.0)
    assert [(p.family, p.value) for p in points] == [("drift", 0.1), ("drift", 0.4), ("hessian", 0.1),
                                                     ("hessian", 0.4)]
    hessian_04 = points[3]
    # paired costs 86-72, 85-70, 87-74 = 14, 15, 13: mean 14, sample sd 1
    assert hessian_04.cost.mean == pytest.approx(14.0)
    assert hessian_04.cost.half_width == pytest.approx(T_975_2 * 1.0 / math.sqrt(3))
    assert hessian_04.mean_backdoor.mean == pytest.approx(7.0)
    assert hessian_04.mean_backdoor.half_width == pytest.approx(T_975_2 * 2.0 / math.sqrt(3))
    assert hessian_04.final_backdoor.mean == pytest.approx(3.5)


def test_writes_table_and_plot_from_the_cli(tmp_path, capsys):
    (tmp_path / "comparison.json").write_text(json.dumps(_comparison()))
    assert main(["plot", str(tmp_path), "--frontier", "client_defense.alpha", "--baseline", "none"]) == 0
    printed = capsys.readouterr().out
    assert f"table: {tmp_path / 'frontier.md'}" in printed and f"plot: {tmp_path / 'frontier.png'}" in printed
    table = (tmp_path / "frontier.md").read_text()
    assert "| hessian | 0.4 | 3 | 14.0 ± 2.5 | 7.0 ± 5.0 | 3.5 ± 2.5 |" in table
    assert (tmp_path / "frontier.png").stat().st_size > 0


@pytest.mark.parametrize("key, baseline, message", [
    ("client_defense.beta", None, r"no variant of this comparison sets 'client_defense.beta'.*client_defense.alpha"),
    ("client_defense.alpha", "nobody", r"--baseline 'nobody' is not a variant.*allowed: none"),
    ("client_defense.alpha", "drift alpha 0.1", r"sets 'client_defense.alpha' itself"),
])
def test_bad_requests_are_refused_with_the_fix(key, baseline, message):
    with pytest.raises(ConfigError, match=message):
        frontier_points(_comparison(), key, baseline)


def test_a_single_seed_comparison_is_refused(tmp_path):
    comparison = _comparison()
    del comparison["seeds"]
    with pytest.raises(ConfigError, match="several seeds"):
        write_frontier(tmp_path, comparison, "client_defense.alpha")


def test_baseline_without_frontier_is_refused(tmp_path, capsys):
    (tmp_path / "comparison.json").write_text(json.dumps(_comparison()))
    assert main(["plot", str(tmp_path), "--baseline", "none"]) != 0
    assert "fix: add --frontier KEY" in capsys.readouterr().err
    assert not (tmp_path / "frontier.md").exists()
