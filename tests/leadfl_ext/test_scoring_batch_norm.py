"""leadfl::batch_norm_scoring_ against ATen's own batch-statistics BatchNorm, bit for bit."""
import pytest
import torch

import leadfl_ext  # noqa: F401  (registers torch.ops.leadfl)

pytestmark = pytest.mark.skipif(not torch.ops.leadfl.batch_norm_scoring_available(),
                                reason="the kernel needs a CPU with AVX2 and FMA")

kernel = torch.ops.leadfl.batch_norm_scoring_


def aten(x, weight, bias, eps):
    return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)[0]


def random_case(generator):
    def draw(low, high):
        return int(torch.randint(low, high, (1,), generator=generator))

    rank = draw(3, 6)  # (N, C, L), (N, C, H, W) or (N, C, D, H, W)
    shape = [draw(1, 40), draw(1, 40)] + [draw(1, 9) for _ in range(rank - 2)]
    if torch.Size(shape[2:]).numel() == 1:
        shape[-1] = 2  # one value per channel and image goes to ATen's other kernel
    scale = float(10 ** torch.empty(1).uniform_(-3, 3, generator=generator))
    offset = float(torch.randn(1, generator=generator)) * 10 * scale
    x = torch.randn(shape, generator=generator) * scale + offset
    channels = shape[1]
    weight = torch.randn(channels, generator=generator) if draw(0, 4) else None
    bias = torch.randn(channels, generator=generator) if draw(0, 4) else None
    eps = [1e-5, 1e-3, 0.1, 0.0][draw(0, 4)]
    return x, weight, bias, eps


@pytest.mark.parametrize("seed", range(8))
def test_the_kernel_gives_atens_bits_on_random_inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(25):
        x, weight, bias, eps = random_case(generator)
        out = torch.full_like(x, 7.0)
        returned = kernel(x, weight, bias, eps, out)
        assert returned.data_ptr() == out.data_ptr()  # written in place, returned
        assert torch.equal(out, aten(x, weight, bias, eps)), (tuple(x.shape), eps)


@pytest.mark.parametrize("shape", [(1000, 16, 28, 28), (1000, 32, 14, 14), (16, 16, 28, 28), (250, 64, 8, 8),
                                   (17, 3, 32, 32), (2, 35, 1, 3)])
def test_the_models_shapes(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator).relu_() * 4 - 0.5  # conv-output-like: a floor and a long tail
    weight, bias = torch.randn(shape[1], generator=generator), torch.randn(shape[1], generator=generator)
    out = torch.empty_like(x)
    kernel(x, weight, bias, 1e-5, out)
    assert torch.equal(out, aten(x, weight, bias, 1e-5))


def test_constant_channels_nan_and_inf_land_where_atens_do():
    x = torch.randn(6, 9, 5, 5, generator=torch.Generator().manual_seed(1))
    x[:, 0] = 3.0  # zero variance: invstd 1/sqrt(eps)
    x[2, 1, 1, 1] = float("nan")
    x[4, 6, 0, 3] = float("inf")
    weight, bias = torch.randn(9), torch.randn(9)
    for eps in (1e-5, 0.0):
        out, expected = torch.empty_like(x), aten(x, weight, bias, eps)
        kernel(x, weight, bias, eps, out)
        assert torch.equal(out.isnan(), expected.isnan())
        assert torch.equal(out.nan_to_num(nan=0.0), expected.nan_to_num(nan=0.0))


def test_bad_input_is_refused_with_the_fix():
    x = torch.randn(4, 3, 5, 5)
    with pytest.raises(RuntimeError, match="one value per channel and image"):
        kernel(torch.randn(8, 3), None, None, 1e-5, torch.empty(8, 3))
    with pytest.raises(RuntimeError, match="must be a contiguous float32 CPU tensor"):
        kernel(x.double(), None, None, 1e-5, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="must be a contiguous float32 CPU tensor"):
        kernel(x.transpose(2, 3), None, None, 1e-5, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="out must be"):
        kernel(x, None, None, 1e-5, torch.empty(4, 3, 5))
    with pytest.raises(RuntimeError, match="not the input itself"):
        kernel(x, None, None, 1e-5, x)
    with pytest.raises(RuntimeError, match="weight must be"):
        kernel(x, torch.ones(4), None, 1e-5, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="eps=-1"):
        kernel(x, None, None, -1.0, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        kernel(torch.randn(1, 3, 1, 1), None, None, 1e-5, torch.empty(1, 3, 1, 1))


fused = torch.ops.leadfl.batch_norm_relu_pool_scoring_


def aten_relu_pool(x, weight, bias, eps):
    return torch.nn.functional.max_pool2d(torch.relu(aten(x, weight, bias, eps)), 2)


@pytest.mark.parametrize("seed", range(6))
def test_the_fused_relu_and_pool_give_atens_bits_on_random_inputs(seed):
    generator = torch.Generator().manual_seed(100 + seed)
    for _ in range(20):
        x, weight, bias, eps = random_case(generator)
        if x.dim() == 3:
            x = torch.stack([x, x * 0.5 - 1, -x], dim=3)  # (N, C, L, 3)
        elif x.dim() == 5:
            x = x.flatten(2, 3)
        for dim in (2, 3):  # at least one 2x2 window
            if x.shape[dim] < 2:
                x = torch.cat([x, 2 - x], dim=dim)
        expected = aten_relu_pool(x, weight, bias, eps)
        out = torch.full_like(expected, 7.0)
        fused([x], weight, bias, eps, out)
        assert torch.equal(out, expected), (tuple(x.shape), eps)


@pytest.mark.parametrize("shape", [(1000, 16, 28, 28), (1000, 32, 14, 14), (7, 5, 33, 35), (3, 4, 2, 2)])
def test_the_fused_op_on_the_models_shapes_and_odd_sizes(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator).relu_() * 4 - 0.5
    weight, bias = torch.randn(shape[1], generator=generator), torch.randn(shape[1], generator=generator)
    expected = aten_relu_pool(x, weight, bias, 1e-5)
    out = torch.empty_like(expected)
    fused([x], weight, bias, 1e-5, out)
    assert torch.equal(out, expected)


def test_the_fused_op_keeps_nan_where_max_pool2d_does():
    x = torch.randn(5, 6, 8, 10, generator=torch.Generator().manual_seed(2))
    x[1, 2, 3, 4] = float("nan")  # channel 2's statistics become NaN: all its outputs are NaN, as in ATen
    x[3, 4, 0, 9] = float("inf")
    weight, bias = torch.randn(6), torch.randn(6)
    expected = aten_relu_pool(x, weight, bias, 1e-5)
    out = torch.empty_like(expected)
    fused([x], weight, bias, 1e-5, out)
    assert torch.equal(out.isnan(), expected.isnan())
    assert expected.isnan().any() and not expected.isnan().all()
    assert torch.equal(out.nan_to_num(nan=0.0), expected.nan_to_num(nan=0.0))


def test_the_fused_op_refuses_what_it_cannot_pool():
    with pytest.raises(RuntimeError, match=r"\(N, C, H, W\) with H, W >= 2"):
        fused([torch.randn(4, 3, 5)], None, None, 1e-5, torch.empty(4, 3, 2))
    with pytest.raises(RuntimeError, match=r"out must be .* of shape \[4, 3, 2, 2\]"):
        fused([torch.randn(4, 3, 5, 5)], None, None, 1e-5, torch.empty(4, 3, 5, 5))
    with pytest.raises(RuntimeError, match="chunk 1 has shape"):
        fused([torch.randn(4, 3, 6, 6), torch.randn(2, 3, 6, 4)], None, None, 1e-5, torch.empty(6, 3, 3, 3))
    with pytest.raises(RuntimeError, match="got no input"):
        fused([], None, None, 1e-5, torch.empty(6, 3, 3, 3))


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_in_chunks_gives_the_whole_batchs_bits(seed):
    generator = torch.Generator().manual_seed(200 + seed)
    batch = int(torch.randint(2, 90, (1,), generator=generator))
    channels = [3, 16, 21, 32][seed]
    height, width = [(28, 28), (14, 14), (9, 7), (4, 2)][seed]
    x = torch.randn(batch, channels, height, width, generator=generator).relu_() * 3 - 0.2
    weight, bias = torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)
    cuts = sorted(set(torch.randint(1, batch, (3,), generator=generator).tolist()))
    chunks = [piece.contiguous() for piece in torch.tensor_split(x, cuts)]
    expected = aten_relu_pool(x, weight, bias, 1e-5)
    out = torch.empty_like(expected)
    fused(chunks, weight, bias, 1e-5, out)
    assert len(chunks) > 1
    assert torch.equal(out, expected)
