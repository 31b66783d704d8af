import pytest
import torch


def devices():
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    return found


@pytest.fixture(params=devices())
def device(request):
    return request.param
