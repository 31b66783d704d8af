"""CUDA-only checks: reduced precision, one launch for a whole list, the current stream."""
import pytest
import torch

import leadfl_ext
from bench.shapes import RESNET18
from leadfl_ext import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RESNET18_LIKE = RESNET18


def make(shapes, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        out.append([torch.randn(s, generator=gen, dtype=torch.float64).mul_(0.7).to("cuda", dtype) for s in shapes])
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2), (torch.float32, 1e-6)])
@pytest.mark.parametrize("op", ["fused_step_", "paper_step_"])
def test_reduced_precision_against_float64_reference(dtype, tol, op):
    shapes = [(257,), (16, 1, 5, 5), (3, 7, 11), (1 << 20,)]
    p, g, t = make(shapes, dtype, seed=4)
    exp_p = [x.double() for x in p]
    exp_t = [x.double() for x in t]
    getattr(reference, op)(exp_p, [x.double() for x in g], exp_t, lr=0.05, alpha=0.4, q=0.2)
    getattr(leadfl_ext, op)(p, g, t, lr=0.05, alpha=0.4, q=0.2)
    outs = p + (t if op == "paper_step_" else [])
    wants = exp_p + (exp_t if op == "paper_step_" else [])
    for got, want in zip(outs, wants):
        rel = (got.double() - want).norm() / want.norm().clamp_min(1e-30)
        assert rel < tol, f"relative error {rel:.2e} over {tol:.0e}"
        assert torch.isfinite(got).all()


def test_whole_resnet18_list_is_one_kernel_launch():
    p, g, t = make(RESNET18_LIKE, torch.float32)
    assert len(p) == 62
    leadfl_ext.fused_step_(p, g, t, lr=0.01, alpha=0.4, q=0.2)  # warm up
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        leadfl_ext.fused_step_(p, g, t, lr=0.01, alpha=0.4, q=0.2)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1, [e.name for e in kernels]


def test_runs_on_the_current_stream_without_host_sync():
    p, g, t = make([(1 << 22,)], torch.float32)
    expected = [x.clone() for x in p]
    reference.fused_step_(expected, g, t, lr=0.01, alpha=0.4, q=0.2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.stream(stream):
            leadfl_ext.fused_step_(p, g, t, lr=0.01, alpha=0.4, q=0.2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream.synchronize()
    torch.testing.assert_close(p[0], expected[0])


def test_misaligned_views_take_the_scalar_path_correctly():
    base = make([(4099,)], torch.float32)
    p, g, t = [[x[1:]] for x in base]   # offset by 4 bytes: not 16-byte aligned
    exp = [p[0].clone()]
    reference.fused_step_(exp, g, t, lr=0.05, alpha=0.4, q=0.2)
    leadfl_ext.fused_step_(p, g, t, lr=0.05, alpha=0.4, q=0.2)
    torch.testing.assert_close(p[0], exp[0])


def test_per_row_alpha_on_cuda_with_rows_not_multiple_of_vector_width():
    rows = 5
    shapes = [(rows, 3), (rows, 7, 3), (rows,)]
    alpha = torch.tensor([0.0, 0.3, 0.4, 1.0, 0.2], device="cuda")
    for dtype in (torch.float32, torch.float64, torch.float16):
        p, g, t = make(shapes, dtype, seed=8)
        exp_p = [x.double() for x in p]
        reference.fused_step_(exp_p, [x.double() for x in g], [x.double() for x in t], lr=0.1, alpha=alpha.double(),
                              q=0.2)
        leadfl_ext.fused_step_(p, g, t, lr=0.1, alpha=alpha, q=0.2)
        for got, want in zip(p, exp_p):
            torch.testing.assert_close(got.double(), want, rtol=3e-3, atol=3e-3)


def test_cuda_build_is_present():
    assert leadfl_ext.cuda_available()
