"""Where the malicious uploads sit among the benign ones (sim.upload_stats, `metrics.upload_stats`):
against a direct transcription of the definitions in docs/algorithms.md §7, and in a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sim import reporting, runner
from sim.config import load_config
from sim.errors import ConfigError
from sim.reporting import read_metrics
from sim.runner import run
from sim.upload_stats import UPLOAD_STAT_COLUMNS, upload_statistics
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


def oracle(rows: np.ndarray, malicious: list[bool]) -> dict[str, float | None]:
    """Row by row, in float64 numpy: each benign row against the mean of the other benign rows,
    each malicious row against the mean of all benign rows."""
    rows = rows.astype(np.float64)
    keep = [i for i in range(len(rows)) if np.isfinite(rows[i]).all()]
    benign = [i for i in keep if not malicious[i]]
    bad = [i for i in keep if malicious[i]]

    def cosine(a, b):
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8))

    out = dict.fromkeys(UPLOAD_STAT_COLUMNS)
    if benign:
        out["upload_norm_benign"] = float(np.mean([np.linalg.norm(rows[i]) for i in benign]))
    if bad:
        out["upload_norm_malicious"] = float(np.mean([np.linalg.norm(rows[i]) for i in bad]))
    if len(benign) >= 2:
        centres = {i: np.mean([rows[j] for j in benign if j != i], axis=0) for i in benign}
        out["upload_distance_benign"] = float(np.mean([np.linalg.norm(rows[i] - centres[i]) for i in benign]))
        out["upload_cosine_benign"] = float(np.mean([cosine(rows[i], centres[i]) for i in benign]))
    if bad and benign:
        centre = np.mean([rows[j] for j in benign], axis=0)
        out["upload_distance_malicious"] = float(np.mean([np.linalg.norm(rows[i] - centre) for i in bad]))
        out["upload_cosine_malicious"] = float(np.mean([cosine(rows[i], centre) for i in bad]))
    return out


def assert_matches(got, want):
    assert set(got) == set(UPLOAD_STAT_COLUMNS)
    for column in UPLOAD_STAT_COLUMNS:
        if want[column] is None:
            assert got[column] is None, column
        else:
            assert got[column] == pytest.approx(want[column], rel=1e-9, abs=1e-12), column


@pytest.mark.parametrize("seed", range(8))
def test_the_columns_match_a_row_by_row_transcription_on_random_uploads(seed):
    generator = np.random.default_rng(seed)
    n, d = int(generator.integers(3, 13)), int(generator.integers(1, 300))
    rows = generator.normal(size=(n, d)) * generator.uniform(0.1, 5.0, size=(n, 1))
    malicious = [bool(flag) for flag in generator.random(n) < 0.4]
    malicious[0], malicious[1], malicious[2] = True, False, False  # both groups present
    got = upload_statistics(torch.tensor(rows, dtype=torch.float32), malicious)
    assert_matches(got, oracle(rows.astype(np.float32), malicious))


def test_the_malicious_rows_far_from_the_benign_centre_read_as_far():
    generator = np.random.default_rng(0)
    benign = generator.normal(size=(7, 50))
    attackers = benign.mean(axis=0) + 10.0 * generator.normal(size=(3, 50))
    got = upload_statistics(torch.tensor(np.vstack([benign, attackers])), [False] * 7 + [True] * 3)
    assert got["upload_distance_malicious"] > 3 * got["upload_distance_benign"]


@pytest.mark.parametrize("malicious", [[False] * 4, [True] * 4, [True, True, True, False], [True, False, False, False]])
def test_groups_too_small_to_measure_leave_their_columns_empty(malicious):
    rows = np.random.default_rng(1).normal(size=(4, 20))
    got = upload_statistics(torch.tensor(rows), malicious)
    assert_matches(got, oracle(rows, malicious))
    benign = malicious.count(False)
    assert (got["upload_distance_benign"] is None) == (benign < 2)
    assert (got["upload_distance_malicious"] is None) == (benign == 0 or benign == len(malicious))
    assert (got["upload_norm_malicious"] is None) == (benign == len(malicious))


def test_non_finite_rows_are_left_out():
    rows = np.random.default_rng(2).normal(size=(6, 30))
    rows[1, 3], rows[4, 0] = math.nan, math.inf
    malicious = [True, False, False, False, True, False]
    got = upload_statistics(torch.tensor(rows), malicious)
    finite = [0, 2, 3, 5]
    assert_matches(got, oracle(rows[finite], [malicious[i] for i in finite]))
    assert all(math.isfinite(value) for value in got.values())


def test_a_shape_that_does_not_match_the_flags_is_refused():
    with pytest.raises(ValueError, match="one row per entry"):
        upload_statistics(torch.zeros(3, 4), [True, False])


def test_a_run_records_the_statistics_of_what_the_server_received_and_nothing_else_changes(tmp_path, monkeypatch):
    seen = []
    original = runner.upload_statistics

    def spy(updates, malicious):
        seen.append((updates.clone(), list(malicious)))
        return original(updates, malicious)

    monkeypatch.setattr(runner, "upload_statistics", spy)
    overrides = [*tiny_synthetic(), "rounds=3", "attack.type=backdoor", "server.aggregator=multikrum", "server.f=1"]
    run(load_config(overrides=overrides), tmp_path / "off", progress=False)
    assert seen == []
    run(load_config(overrides=[*overrides, "metrics.upload_stats=true"]), tmp_path / "on", progress=False)
    rows = read_metrics(tmp_path / "on")
    assert len(seen) == 3
    for row, (updates, malicious) in zip(rows, seen):
        assert sum(malicious) == row["malicious_selected"] == 2
        assert updates.shape[0] == len(row["selected"].split())
        assert_matches({column: row[column] for column in UPLOAD_STAT_COLUMNS}, upload_statistics(updates, malicious))
        assert row["upload_distance_malicious"] > 0
    other = [c for c in reporting.METRIC_COLUMNS if c not in reporting.TIMING_COLUMNS and c not in UPLOAD_STAT_COLUMNS]
    off = read_metrics(tmp_path / "off")
    assert [[row[c] for c in other] for row in rows] == [[row[c] for c in other] for row in off]
    assert all(row[c] is None for row in off for c in UPLOAD_STAT_COLUMNS)


def test_upload_stats_must_be_true_or_false():
    with pytest.raises(ConfigError, match="metrics.upload_stats"):
        load_config(overrides=["metrics.upload_stats=often"])
