"""The float64 Gram, weighted-sum and dot helpers of sim.server.aggregate: the numpy path (CPU)
and the torch path (every other device, run here on the CPU) give the same values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sim.server import aggregate


@pytest.fixture(params=["numpy", "torch"])
def path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setattr(aggregate, "_on_numpy", lambda rows: False)
    return request.param


def test_gram_weighted_rows_and_dots_match_plain_float64(path, monkeypatch):
    monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", 64)  # several column chunks
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(7, 50)).astype(np.float32)
    offset = rng.normal(size=50)
    vector = rng.normal(size=50)
    weights = rng.normal(size=(3, 7))
    exact = rows.astype(np.float64)
    gram = aggregate.gram_matrix(torch.from_numpy(rows), torch.from_numpy(offset))
    assert gram.dtype == torch.float64
    assert np.allclose(gram.numpy(), (exact + offset) @ (exact + offset).T, rtol=1e-13)
    assert np.allclose(aggregate.gram_matrix(torch.from_numpy(rows)).numpy(), exact @ exact.T, rtol=1e-13)
    mixed = aggregate.weighted_rows(torch.from_numpy(weights), torch.from_numpy(rows))
    assert mixed.dtype == torch.float32 and np.allclose(mixed.numpy(), weights @ exact, rtol=1e-6)
    dots, norms = aggregate.row_dots(torch.from_numpy(rows), torch.from_numpy(vector))
    assert np.allclose(dots.numpy(), exact @ vector, rtol=1e-13)
    assert np.allclose(norms.numpy(), (exact**2).sum(axis=1), rtol=1e-13)


def test_the_new_rules_give_the_same_result_on_the_torch_path(monkeypatch):
    from sim import rng as streams
    from sim.server.base import AggregationContext
    from sim.server.flame import Flame
    from sim.server.fltrust import FLTrust
    from sim.server.foolsgold import FoolsGold
    from sim.server.prodigy import Prodigy

    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(12, 300, generator=generator)
    updates[:3] += 2.0
    global_params = torch.randn(300, generator=generator)

    def results():
        context = AggregationContext(generator=streams.torch_stream(0, 0, streams.AGGREGATION), global_params=global_params,
                                     reference_update=updates[3:].mean(dim=0), clients=list(range(12)))
        return [rule(updates, context) for rule in (Prodigy(3), Prodigy(3, nnm=True), Flame(), FoolsGold(), FLTrust())]

    on_numpy = results()
    monkeypatch.setattr(aggregate, "_on_numpy", lambda rows: False)
    for a, b in zip(on_numpy, results()):
        assert a.kept == b.kept
        assert torch.allclose(a.update, b.update, rtol=1e-5, atol=1e-7)
