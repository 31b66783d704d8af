import dataclasses

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test (files opt in with `pytestmark`): tiny models are fastest
    there, and on a busy machine a second thread only adds spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64(monkeypatch, dataset):
    """Both engines in float64 (models and data), so rounding cannot hide a difference in the maths."""
    import sim.engines.batched
    import sim.engines.sequential
    from sim.models import build_model

    def build_float64_model(*args, **kwargs):
        return build_model(*args, **kwargs).double()

    monkeypatch.setattr(sim.engines.sequential, "build_model", build_float64_model)
    monkeypatch.setattr(sim.engines.batched, "build_model", build_float64_model)
    return dataclasses.replace(
        dataset,
        train_x=dataset.train_x.double(),
        trigger_hi=dataset.trigger_hi.double(),
        trigger_lo=dataset.trigger_lo.double(),
    )
