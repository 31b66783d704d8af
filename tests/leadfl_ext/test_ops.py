"""The fused ops against the plain-PyTorch reference, element by element."""
import math

import pytest
import torch

import leadfl_ext
from leadfl_ext import reference

OPS = {
    "fused_step_": (leadfl_ext.fused_step_, reference.fused_step_, "lookahead_grads"),
    "paper_step_": (leadfl_ext.paper_step_, reference.paper_step_, "deltas"),
}

SHAPE_LISTS = {
    "empty": [(0,), (3, 0, 2)],
    "one_element": [(1,)],
    "odd_sizes": [(7,), (13,), (33,), (1031,)],
    "3d_4d": [(3, 5, 7), (4, 3, 5, 5), (2, 1, 9, 3)],
    "large": [(1_048_583,)],
    "mixed": [(16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (10, 1568), (10,)],
    "200_small": [(k % 7 + 1, k % 5 + 2) for k in range(200)],
}


def fresh_inputs(shapes, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, scale=1.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    params = [rand(s) for s in shapes]
    grads = [rand(s) for s in shapes]
    # Values near 1 so the clamp is hit from both sides and also passes some elements through.
    thirds = [rand(s, 0.5) for s in shapes]
    return params, grads, thirds


def run_both(op_name, shapes, alpha, dtype=torch.float64, device="cpu", seed=0, lr=0.05, q=0.2):
    fast, ref, _ = OPS[op_name]
    params, grads, thirds = fresh_inputs(shapes, dtype, device, seed)
    expected_params = [p.clone() for p in params]
    expected_thirds = [t.clone() for t in thirds]
    ref(expected_params, grads, expected_thirds, lr=lr, alpha=alpha, q=q)
    before = [p.clone() for p in params]
    fast(params, grads, thirds, lr=lr, alpha=alpha, q=q)
    return params, thirds, expected_params, expected_thirds, before


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("case", list(SHAPE_LISTS))
def test_op_matches_reference_float64(op_name, case, device):
    params, thirds, exp_params, exp_thirds, before = run_both(op_name, SHAPE_LISTS[case], 0.4, device=device,
                                                                seed=hash(case) % 1000)
    for k, (got, want, old) in enumerate(zip(params, exp_params, before)):
        # The reference moves every element, so an element the kernel skipped would fail here.
        assert bool((want != old).all()), f"inputs leave params[{k}] unchanged somewhere; pick other inputs"
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13, msg=f"params[{k}]")
    if op_name == "paper_step_":
        for k, (got, want) in enumerate(zip(thirds, exp_thirds)):
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13, msg=f"deltas[{k}]")


@pytest.mark.parametrize("op_name", list(OPS))
def test_op_matches_reference_float32(op_name, device):
    params, thirds, exp_params, exp_thirds, _ = run_both(op_name, SHAPE_LISTS["mixed"] + SHAPE_LISTS["odd_sizes"],
                                                         0.4, dtype=torch.float32, device=device, seed=3)
    for got, want in zip(params + thirds, exp_params + exp_thirds):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op_name", list(OPS))
def test_per_row_alpha_matches_reference_and_zero_rows_are_plain_sgd(op_name, device):
    rows = 6
    shapes = [(rows, 3, 5, 5), (rows, 7), (rows,), (rows, 1031)]
    alpha = torch.tensor([0.4, 0.0, 0.25, 1.5, 0.0, 0.1], dtype=torch.float64, device=device)
    params, thirds, exp_params, exp_thirds, before = run_both(op_name, shapes, alpha, device=device, seed=11)
    for got, want in zip(params + thirds, exp_params + exp_thirds):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    _, grads, _ = fresh_inputs(shapes, torch.float64, device, 11)
    for got, old, g in zip(params, before, grads):
        for row in (1, 4):  # alpha 0: W - lr*g exactly
            torch.testing.assert_close(got[row], old[row] - 0.05 * g[row], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("op_name", list(OPS))
def test_scalar_alpha_equals_constant_per_row_alpha(op_name, device):
    shapes = [(4, 9), (4, 2, 3)]
    a, ta, _, _, _ = run_both(op_name, shapes, 0.3, device=device, seed=5)
    b, tb, _, _, _ = run_both(op_name, shapes, torch.full((4,), 0.3, dtype=torch.float64, device=device),
                              device=device, seed=5)
    for x, y in zip(a + ta, b + tb):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# -- memory layouts: any dense layout, the same for every tensor of one parameter index ------

CL = torch.channels_last


def _layouts(tensors, layout):
    """The same values in another memory layout: `channels_last` (NHWC) 4-D tensors, `rows` (the
    sequential engine's `[1, ...]` rows of channels_last parameters), or `permuted` (the 4-D
    tensors stored with their dims in reverse order)."""
    out = []
    for x in tensors:
        if x.dim() != 4:
            out.append(x.unsqueeze(0).clone() if layout == "rows" else x.clone())
        elif layout == "channels_last":
            out.append(x.contiguous(memory_format=CL))
        elif layout == "rows":
            out.append(x.contiguous(memory_format=CL).unsqueeze(0))
        else:
            out.append(x.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0))
    return out


# Every tensor (and every row, for a per-row alpha) a whole number of 8-element vectors: the AVX2
# build's scalar tail of paper_step_ lets the compiler fuse a multiply-add that the vector body
# rounds in two steps, so an element moved into or out of a tail by another layout could differ
# in its last bit. FashionMNIST's and CIFAR-10's conv weights have such sizes.
LAYOUT_SHAPES = [(16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (10, 1568), (4, 7, 2, 9), (8, 3, 1, 1)]


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("layout", ["channels_last", "rows", "permuted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_dense_layout_gives_the_contiguous_result_exactly(op_name, layout, dtype, device):
    """The element-wise update walks memory order, so a channels_last (or otherwise permuted)
    call equals the contiguous call on the same values bit for bit, in the caller's layout
    (shapes as LAYOUT_SHAPES says)."""
    fast = OPS[op_name][0]
    params, grads, thirds = fresh_inputs(LAYOUT_SHAPES, dtype, device, 31)
    p2, g2, t2 = (_layouts(xs, layout) for xs in (params, grads, thirds))
    assert any(not x.is_contiguous() for x in p2), "the layout under test must differ from contiguous"
    strides = [x.stride() for x in p2 + t2]
    before = [x.clone() for x in params]
    fast(params, grads, thirds, lr=0.05, alpha=0.4, q=0.2)
    fast(p2, g2, t2, lr=0.05, alpha=0.4, q=0.2)
    assert [x.stride() for x in p2 + t2] == strides
    for k, (want, got, old) in enumerate(zip(params + thirds, p2 + t2, before + [None] * len(thirds))):
        got = got[0] if layout == "rows" else got
        assert torch.equal(want, got), f"tensor {k} differs from the contiguous result"
        if old is not None:
            assert bool((want != old).any()), f"params[{k}] did not move"


@pytest.mark.parametrize("op_name", list(OPS))
def test_channels_last_with_a_per_row_alpha(op_name, device):
    """channels_last keeps dim 0 outermost (one block of memory per row), so a per-row alpha
    reads the right value for every element: equal to the contiguous call."""
    fast = OPS[op_name][0]
    shapes = [(4, 8, 5, 5), (4, 16, 2, 3), (4, 8)]
    alpha = torch.tensor([0.4, 0.0, 1.5, 0.25], dtype=torch.float64, device=device)
    params, grads, thirds = fresh_inputs(shapes, torch.float32, device, 32)
    p2, g2, t2 = (_layouts(xs, "channels_last") for xs in (params, grads, thirds))
    fast(params, grads, thirds, lr=0.05, alpha=alpha, q=0.2)
    fast(p2, g2, t2, lr=0.05, alpha=alpha, q=0.2)
    for want, got in zip(params + thirds, p2 + t2):
        assert torch.equal(want, got)


@pytest.mark.parametrize("op_name", list(OPS))
def test_channels_last_keeps_the_in_place_contract(op_name):
    """Version counters move and a leaf requiring grad is refused in grad mode, as for contiguous tensors."""
    fast = OPS[op_name][0]
    p, g, t = (_layouts(xs, "channels_last") for xs in fresh_inputs([(2, 3, 4, 5)], torch.float32, "cpu", 33))
    before = [x._version for x in p + t]
    fast(p, g, t, lr=0.1, alpha=0.4, q=0.2)
    assert p[0]._version == before[0] + 1
    assert t[0]._version == before[1] + (op_name == "paper_step_")
    leaf = p[0].clone().requires_grad_()
    with pytest.raises(RuntimeError, match=_escape("params[0] is a leaf tensor that requires grad")):
        fast([leaf], g, t, lr=0.1, alpha=0.4, q=0.2)


@pytest.mark.parametrize("op_name", list(OPS))
def test_fake_kernel_checks_layouts_like_the_kernels(op_name):
    """Under fake tensors (what torch.compile traces) a channels_last call passes and mismatched
    strides or a tensor with gaps are refused with the kernels' messages."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = getattr(torch.ops.leadfl, op_name)
    kwargs = dict(lr=0.1, alpha=0.4, alpha_rows=None, q=0.2)
    with FakeTensorMode():
        p = torch.empty(2, 3, 4, 5).contiguous(memory_format=CL)
        g = torch.empty(2, 3, 4, 5).contiguous(memory_format=CL)
        t = torch.empty(2, 3, 4, 5).contiguous(memory_format=CL)
        op([p], [g], [t], **kwargs)
        with pytest.raises(RuntimeError, match=_escape("grads[0] has strides (60, 20, 5, 1) but params[0] has "
                                                       "strides (60, 1, 15, 3)")):
            op([p], [torch.empty(2, 3, 4, 5)], [t], **kwargs)
        with pytest.raises(RuntimeError, match=_escape("params[0] (shape [2, 3, 4, 5], strides (120, 40, 10, 2)) "
                                                       "is not dense")):
            op([torch.empty(2, 3, 4, 10)[..., ::2]], [g], [t], **kwargs)


def test_channels_last_compiles_into_one_graph():
    """torch.compile of a channels_last step traces (fake kernels, functionalisation) and gives eager's result."""
    def step(p, g, t):
        torch.ops.leadfl.fused_step_([p], [g], [t], lr=0.1, alpha=0.4, alpha_rows=None, q=0.2)
        return p * 2

    torch._dynamo.reset()
    p, g, t = (_layouts(xs, "channels_last")[0] for xs in fresh_inputs([(2, 3, 4, 5)], torch.float32, "cpu", 34))
    p2 = p.clone()
    out = torch.compile(step, backend="aot_eager", fullgraph=True)(p, g, t)
    out2 = step(p2, g, t)
    assert torch.equal(out, out2) and torch.equal(p, p2) and p.stride() == p2.stride()


def test_hessian_clamp_and_update_by_hand():
    # g = 0.5, g~ = 2.0: 1 - (2.0 - 0.5) = -0.5 -> clamped to -0.2.
    # W = 1 - 0.1*0.5 - 0.1*0.4*(-0.2) = 1 - 0.05 + 0.008 = 0.958
    w = torch.tensor([1.0, 1.0], dtype=torch.float64)
    g = torch.tensor([0.5, 0.5], dtype=torch.float64)
    g_look = torch.tensor([2.0, 0.45], dtype=torch.float64)  # second: 1 - (-0.05) = 1.05 -> 0.2
    leadfl_ext.fused_step_(w, g, g_look, lr=0.1, alpha=0.4, q=0.2)
    torch.testing.assert_close(w, torch.tensor([0.958, 1 - 0.05 - 0.008], dtype=torch.float64))


def test_curvature_constant_by_hand():
    # identity 0 (the `curvature` variant): R = clamp(-(g~ - g), -q, q).
    # g~ - g = 1.5 -> R = -0.2: W = 1 - 0.05 + 0.008 = 0.958; g~ - g = -0.05 -> R = 0.05: W = 1 - 0.05 - 0.002.
    w = torch.tensor([1.0, 1.0], dtype=torch.float64)
    g = torch.tensor([0.5, 0.5], dtype=torch.float64)
    g_look = torch.tensor([2.0, 0.45], dtype=torch.float64)
    leadfl_ext.fused_step_(w, g, g_look, lr=0.1, alpha=0.4, q=0.2, identity=0.0)
    torch.testing.assert_close(w, torch.tensor([0.958, 1 - 0.05 - 0.002], dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("identity", [0.0, 0.5, 0.2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("alpha_kind", ["scalar", "per_row"])
def test_identity_constant_matches_reference(identity, dtype, alpha_kind, device):
    shapes = [(6, 3, 5, 5), (6, 7), (6,), (6, 1031)]
    params, grads, thirds = fresh_inputs(shapes, dtype, device, 21)
    alpha = 0.4 if alpha_kind == "scalar" else torch.tensor([0.4, 0.0, 0.25, 1.5, 0.0, 0.1], device=device)
    expected = [p.clone() for p in params]
    reference.fused_step_(expected, grads, thirds, lr=0.05, alpha=alpha, q=0.2, identity=identity)
    leadfl_ext.fused_step_(params, grads, thirds, lr=0.05, alpha=alpha, q=0.2, identity=identity)
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    for got, want in zip(params, expected):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # and the constant matters (the test can fail):
    other = fresh_inputs(shapes, dtype, device, 21)[0]
    leadfl_ext.fused_step_(other, grads, thirds, lr=0.05, alpha=0.4, q=0.2, identity=identity + 1.0)
    assert not torch.equal(other[0], params[0])


def test_identity_q_with_equal_gradients_is_the_uniform_push(device):
    # The `drift` variant: g~ = g and identity = q give R = q exactly: W - lr*g - lr*alpha*q.
    params, grads, _ = fresh_inputs([(5, 9)], torch.float64, device, 4)
    expected = params[0] - 0.05 * grads[0] - 0.05 * 0.4 * 0.2
    leadfl_ext.fused_step_(params, grads, grads, lr=0.05, alpha=0.4, q=0.2, identity=0.2)
    torch.testing.assert_close(params[0], expected, rtol=0, atol=1e-15)


def test_bad_identity_is_refused_before_any_write():
    params, grads, thirds = _good()
    before = [p.clone() for p in params]
    for bad in (math.nan, math.inf):
        with pytest.raises(RuntimeError, match=r"identity=.* is not allowed; identity must be a finite number"):
            leadfl_ext.fused_step_(params, grads, thirds, lr=0.1, alpha=0.4, q=0.2, identity=bad)
        with pytest.raises(RuntimeError, match=r"identity=.* is not allowed"):
            leadfl_ext.fused_step_([], [], [], lr=0.1, alpha=0.4, q=0.2, identity=bad)
    with pytest.raises(RuntimeError, match=r"identity=1e\+300 overflows float32"):
        leadfl_ext.fused_step_(params, grads, thirds, lr=0.1, alpha=0.4, q=0.2, identity=1e300)
    with pytest.raises(TypeError, match="identity must be a float"):
        leadfl_ext.fused_step_(params, grads, thirds, lr=0.1, alpha=0.4, q=0.2, identity="1")
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_paper_update_by_hand():
    # W=1, g=1, D=0.9, lr=0.1: R = clamp(1 - 0.1 - 0.9) = 0 -> W' = 0.9, D = -0.1
    # second element D=0.95: R = clamp(-0.05) = -0.05 -> W' = 0.9 + 0.1*0.5*0.05 = 0.9025, D = -0.0975
    w = torch.tensor([1.0, 1.0], dtype=torch.float64)
    g = torch.tensor([1.0, 1.0], dtype=torch.float64)
    d = torch.tensor([0.9, 0.95], dtype=torch.float64)
    leadfl_ext.paper_step_(w, g, d, lr=0.1, alpha=0.5, q=0.2)
    torch.testing.assert_close(w, torch.tensor([0.9, 0.9025], dtype=torch.float64))
    torch.testing.assert_close(d, torch.tensor([-0.1, -0.0975], dtype=torch.float64))


@pytest.mark.parametrize("op_name", list(OPS))
def test_nan_and_inf_in_data_propagate(op_name, device):
    fast, ref, _ = OPS[op_name]
    params, grads, thirds = fresh_inputs([(5, 8)], torch.float64, device, 2)
    grads[0][0, 1] = math.nan
    grads[0][2, 3] = math.inf
    thirds[0][4, 7] = -math.inf
    exp_p, exp_t = [p.clone() for p in params], [t.clone() for t in thirds]
    ref(exp_p, grads, exp_t, lr=0.1, alpha=0.4, q=0.2)
    fast(params, grads, thirds, lr=0.1, alpha=0.4, q=0.2)
    assert torch.isnan(params[0][0, 1])
    assert not torch.isfinite(params[0][2, 3])
    torch.testing.assert_close(params[0], exp_p[0], equal_nan=True, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(thirds[0], exp_t[0], equal_nan=True, rtol=1e-13, atol=1e-13)


def test_empty_list_is_a_no_op():
    leadfl_ext.fused_step_([], [], [], lr=0.1, alpha=0.4, q=0.2)
    leadfl_ext.paper_step_([], [], [], lr=0.1, alpha=0.4, q=0.2)


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("alpha_kind", ["scalar", "per_row"])
def test_opcheck(op_name, alpha_kind, device):
    params, grads, thirds = fresh_inputs([(4, 3), (4,), (4, 2, 5)], torch.float32, device, 9)
    alpha_rows = torch.rand(4, device=device) if alpha_kind == "per_row" else None
    op = getattr(torch.ops.leadfl, op_name)
    torch.library.opcheck(op, (params, grads, thirds), dict(lr=0.1, alpha=0.4, alpha_rows=alpha_rows, q=0.2))
    if op_name == "fused_step_":
        torch.library.opcheck(op, (params, grads, thirds),
                              dict(lr=0.1, alpha=0.4, alpha_rows=alpha_rows, q=0.2, identity=0.0))


# -- bad input ---------------------------------------------------------------------------------

def _good(device="cpu"):
    return fresh_inputs([(3, 4), (5,)], torch.float32, device, 1)


BAD_CASES = {
    "unequal_lengths": (lambda p, g, t: (p, g[:1], t), {}, "grads has 1 tensors but params has 2"),
    "unequal_third": (lambda p, g, t: (p, g, t[:1]), {}, "has 1 tensors but params has 2"),
    "shape_mismatch": (lambda p, g, t: (p, [g[0], g[1][:4]], t), {}, "grads[1] has shape [4] but params[1] has shape [5]"),
    "dtype_mismatch": (lambda p, g, t: (p, [g[0], g[1].double()], t), {}, "grads[1] has dtype Double"),
    "q_zero": (None, dict(q=0.0), "q=0"),
    "q_negative": (None, dict(q=-1.0), "q=-1"),
    "lr_zero": (None, dict(lr=0.0), "lr=0"),
    "lr_negative": (None, dict(lr=-0.1), "lr=-0.1"),
    "alpha_negative": (None, dict(alpha=-0.5), "alpha=-0.5"),
    "lr_nan": (None, dict(lr=math.nan), "lr=nan"),
    "q_nan": (None, dict(q=math.nan), "q=nan"),
    "alpha_nan": (None, dict(alpha=math.nan), "alpha=nan"),
    "alpha_inf": (None, dict(alpha=math.inf), "alpha=inf"),
    "alpha_wrong_length": (lambda p, g, t: ([x[:3].contiguous() for x in p], [x[:3].contiguous() for x in g],
                                            [x[:3].contiguous() for x in t]),
                           dict(alpha=torch.ones(4)), "alpha tensor has 4 values"),
    "alpha_negative_row": (lambda p, g, t: ([x[:3].contiguous() for x in p], [x[:3].contiguous() for x in g],
                                            [x[:3].contiguous() for x in t]),
                           dict(alpha=torch.tensor([0.1, -0.2, 0.3])), "alpha[1]=-0.2"),
    "alpha_2d": (None, dict(alpha=torch.ones(3, 4)), "must be 1-D"),
    # Gaps between the elements, or elements that overlap: no single run of memory to walk.
    "strided_with_gaps": (lambda p, g, t: ([torch.randn(3, 8)[:, ::2], p[1]], g, t), {},
                          "params[0] (shape [3, 4], strides (8, 2)) is not dense"),
    "grads_with_gaps": (lambda p, g, t: (p, [torch.randn(3, 8)[:, ::2], g[1]], t), {},
                        "grads[0] (shape [3, 4], strides (8, 2)) is not dense"),
    "expanded_params": (lambda p, g, t: ([torch.randn(1, 4).expand(3, 4), p[1]], g, t), {},
                        "params[0] (shape [3, 4], strides (0, 1)) is not dense"),
    # Dense, but laid out unlike params[0]: element i in memory would be another logical element.
    "mismatched_strides": (lambda p, g, t: ([_column_major(p[0]), p[1]], g, t), {},
                           "grads[0] has strides (4, 1) but params[0] has strides (1, 3)"),
    "mismatched_strides_third": (lambda p, g, t: ([_column_major(p[0]), p[1]], [_column_major(g[0]), g[1]], t), {},
                                 "has strides (4, 1) but params[0] has strides (1, 3)"),
    # A per-row alpha needs each row of dim 0 to be one block of memory.
    "alpha_rows_not_blocks": (lambda p, g, t: ([_column_major(x[:3]) for x in p], [_column_major(x[:3]) for x in g],
                                               [_column_major(x[:3]) for x in t]),
                              dict(alpha=torch.ones(3)), "does not keep its rows of dim 0 as consecutive blocks"),
    "half_on_cpu": (lambda p, g, t: ([x.half() for x in p], [x.half() for x in g], [x.half() for x in t]), {},
                    "float16/bfloat16 only on CUDA"),
    "meta_device_mix": (lambda p, g, t: (p, [g[0], torch.empty(5, device="meta")], t), {}, "is on meta"),
    # An alpha on "meta" would send the call to the meta kernel, which wrote nothing.
    "alpha_on_meta": (lambda p, g, t: _three_rows(p, g, t), dict(alpha=torch.ones(3, device="meta")),
                      "alpha tensor is on meta but params[0] is on cpu"),
    # A strided alpha: its values are [0.4, -1], which the kernel would use.
    "alpha_strided_negative": (lambda p, g, t: _two_rows(p, g, t),
                               dict(alpha=torch.tensor([0.4, 0.4, -1.0, 0.4], dtype=torch.float64)[::2]),
                               "alpha[1]=-1 is not allowed"),
    # Finite in double, not in the float32 arithmetic of float32 tensors.
    "lr_overflows_float32": (None, dict(lr=1e300), "lr=1e+300 overflows float32, the arithmetic type of params[0]"),
    "q_overflows_float32": (None, dict(q=1e39), "q=1e+39 overflows float32"),
    "lr_alpha_overflows_float32": (None, dict(lr=1e20, alpha=1e20), "lr*alpha=1e+40 overflows float32"),
    "lr_alpha_row_overflows_float32": (lambda p, g, t: _three_rows(p, g, t),
                                       dict(lr=1e20, alpha=torch.tensor([0.1, 1e20, 0.3])),
                                       "lr*alpha[1]=1e+40 overflows float32"),
    "lr_rounds_to_zero_float32": (None, dict(lr=1e-50), "lr=1e-50 rounds to 0 in float32"),
    "lr_alpha_overflows_float64": (lambda p, g, t: ([x.double() for x in p], [x.double() for x in g],
                                                    [x.double() for x in t]),
                                   dict(lr=1e200, alpha=1e200), "lr*alpha=inf overflows float64"),
    # Written tensors that share memory with another argument.
    "same_tensor_twice": (lambda p, g, t: ([p[0], p[0]], [g[0], g[0].clone()], [t[0], t[0].clone()]), {},
                          "params[0] and params[1] share memory"),
    "third_is_params": (lambda p, g, t: (p[:1], g[:1], p[:1]), {}, "params[0] and "),
    "grads_overlap_params": (lambda p, g, t: _shifted_views(p, g, t), {}, "params[0] and grads[0] share memory"),
    "inference_params": (lambda p, g, t: (_inference(p), g, t), {}, "params[0] is an inference tensor"),
}


def _column_major(x):
    """The values of `x` (2-D) laid out column by column: dense, strides (1, rows)."""
    return x.t().contiguous().t() if x.dim() == 2 else x


def _three_rows(p, g, t):
    return tuple([x[:3].contiguous() for x in xs] for xs in (p, g, t))


def _two_rows(p, g, t):
    return tuple([x[:2].contiguous() for x in xs] for xs in (p, g, t))


def _shifted_views(p, g, t):
    """params = x[4:], grads = x[:-4]: overlapping views of one tensor."""
    x = torch.randn(1000)
    return [x[4:]], [x[:-4]], [torch.zeros(996)]


def _inference(tensors):
    with torch.inference_mode():
        return [x.clone() for x in tensors]


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_refused_before_any_write(op_name, case):
    fast = OPS[op_name][0]
    make, hyper_overrides, message = BAD_CASES[case]
    p, g, t = _good()
    if make is not None:
        p, g, t = make(p, g, t)
    hyper = dict(lr=0.1, alpha=0.4, q=0.2)
    hyper.update(hyper_overrides)
    before = [x.clone() for x in p if x.device.type != "meta"]
    with pytest.raises((RuntimeError, ValueError, TypeError), match=_escape(message)):
        fast(p, g, t, **hyper)
    for old, new in zip(before, [x for x in p if x.device.type != "meta"]):
        assert torch.equal(old, new), "params were written before the error"


def _escape(text):
    import re
    return re.escape(text)


def test_error_names_the_fix_for_lists():
    p, g, t = _good()
    with pytest.raises(RuntimeError) as info:
        leadfl_ext.fused_step_(p, g[:1], t, lr=0.1, alpha=0.4, q=0.2)
    assert "lookahead" not in str(info.value) and "pass exactly one grads tensor per parameter" in str(info.value)


def test_non_tensor_arguments_are_refused():
    p, g, t = _good()
    with pytest.raises(TypeError, match="params must be a tensor or a list"):
        leadfl_ext.fused_step_(3, g, t, lr=0.1, alpha=0.4, q=0.2)
    with pytest.raises(TypeError, match="alpha must be a float or a 1-D tensor"):
        leadfl_ext.fused_step_(p, g, t, lr=0.1, alpha="0.4", q=0.2)


def test_portable_cpu_build_matches_reference_too():
    """The CPU kernel picks AVX2 loops where the CPU has them; the portable build is checked here
    in a fresh process that forces it."""
    import os
    import subprocess
    import sys
    script = """
import math, torch, leadfl_ext
from leadfl_ext import reference
assert leadfl_ext.cpu_kernel_isa() == "default", leadfl_ext.cpu_kernel_isa()
gen = torch.Generator().manual_seed(7)
for dtype in (torch.float64, torch.float32):
    shapes = [(7,), (3, 5, 7), (4, 3, 5, 5), (1031,), (200_003,)]
    for op in ("fused_step_", "paper_step_"):
        for alpha in (0.4, torch.tensor([0.4, 0.0, 1.5], dtype=torch.float64)):
            use = shapes if isinstance(alpha, float) else [(3, 5, 7), (3, 1031)]
            p = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in use]
            g = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in use]
            t = [(0.5 * torch.randn(s, generator=gen, dtype=torch.float64)).to(dtype) for s in use]
            g[0].view(-1)[0] = math.nan
            ep, et = [x.clone() for x in p], [x.clone() for x in t]
            getattr(reference, op)(ep, g, et, lr=0.05, alpha=alpha, q=0.2)
            getattr(leadfl_ext, op)(p, g, t, lr=0.05, alpha=alpha, q=0.2)
            tol = 1e-13 if dtype == torch.float64 else 1e-6
            for a, b in zip(p + t, ep + et):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)
print("ok")
"""
    env = dict(os.environ, LEADFL_CPU_ISA="default")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_cpu_kernel_reports_its_instruction_set():
    assert leadfl_ext.cpu_kernel_isa() in ("avx2", "default")


# -- the in-place contract: alpha's layout, versions, autograd, aliasing -----------------------

@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_alpha_is_read_through_its_strides(op_name, layout, device):
    """A strided or expanded alpha acts as its contiguous copy (the values between or after its
    elements, -1 here, would be refused if they were read)."""
    fast = OPS[op_name][0]
    if layout == "strided":
        base = torch.tensor([0.4, -1.0, 0.0, -1.0, 1.5, -1.0, 0.25, -1.0], dtype=torch.float64, device=device)
        alpha = base[::2]
    else:
        alpha = torch.tensor([0.4, -1.0], dtype=torch.float64, device=device)[:1].expand(4)
    shapes = [(4, 3), (4,), (4, 2, 5)]
    p, g, t = fresh_inputs(shapes, torch.float64, device, 21)
    p2, t2 = [x.clone() for x in p], [x.clone() for x in t]
    fast(p, g, t, lr=0.1, alpha=alpha, q=0.2)
    fast(p2, g, t2, lr=0.1, alpha=alpha.contiguous(), q=0.2)
    for a, b in zip(p + t, p2 + t2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("op_name", list(OPS))
def test_written_tensors_get_a_new_version(op_name, device):
    fast = OPS[op_name][0]
    p, g, t = fresh_inputs([(3, 4), (5,)], torch.float32, device, 1)
    before = [x._version for x in p + g + t]
    fast(p, g, t, lr=0.1, alpha=0.4, q=0.2)
    third_written = op_name == "paper_step_"
    expected = [v + 1 for v in before[:2]] + before[2:4] + [v + third_written for v in before[4:]]
    assert [x._version for x in p + g + t] == expected


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("saved", ["params", "third"])
def test_a_tensor_saved_for_backward_is_not_changed_silently(op_name, saved, device):
    """y = (x * p).sum() saves p; updating p afterwards must make y.backward() fail (as after any
    in-place op of torch), not give a wrong x.grad."""
    fast = OPS[op_name][0]
    if saved == "third" and op_name == "fused_step_":
        pytest.skip("fused_step_ does not write lookahead_grads")
    p, g, t = fresh_inputs([(3, 4)], torch.float32, device, 2)
    x = torch.ones(3, 4, device=device, requires_grad=True)
    y = (x * (p[0] if saved == "params" else t[0])).sum()
    fast(p, g, t, lr=0.1, alpha=0.4, q=0.2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("case", ["leaf", "view_of_leaf", "leaf_third"])
def test_leaf_requiring_grad_is_refused_in_grad_mode_and_updated_under_no_grad(op_name, case):
    fast = OPS[op_name][0]
    if case == "leaf_third" and op_name == "fused_step_":
        pytest.skip("fused_step_ does not write lookahead_grads")
    p, g, t = _good()
    leaf = torch.randn(2, 5, requires_grad=True)
    if case == "leaf":
        p[1] = p[1].requires_grad_()
        name, message = "params[1]", "params[1] is a leaf tensor that requires grad, and grad mode is on"
    elif case == "view_of_leaf":
        p[1] = leaf[0]
        name, message = "params[1]", "params[1] is a view of a leaf tensor that requires grad"
    else:
        t[1] = t[1].requires_grad_()
        name, message = "deltas[1]", "deltas[1] is a leaf tensor that requires grad"
    before = [x.detach().clone() for x in p + t]
    with pytest.raises(RuntimeError, match=_escape(message)):
        fast(p, g, t, lr=0.1, alpha=0.4, q=0.2)
    for old, new in zip(before, p + t):
        assert torch.equal(old, new.detach()), f"{name}: written before the error"
    with torch.no_grad():
        fast(p, g, t, lr=0.1, alpha=0.4, q=0.2)
    assert not torch.equal(before[1], p[1].detach())


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("requiring", ["params", "grads"])
def test_backward_through_an_updated_tensor_raises(op_name, requiring):
    """The op has no derivative: a gradient that would flow through it raises instead of
    silently skipping the update (params as a non-leaf, or a gradient that requires grad)."""
    fast = OPS[op_name][0]
    p, g, t = _good()
    w = torch.randn(3, 4, requires_grad=True)
    if requiring == "params":
        p[0] = w * 2
    else:
        g[0] = w * 2
    fast(p, g, t, lr=0.1, alpha=0.4, q=0.2)
    assert p[0].requires_grad
    with pytest.raises(RuntimeError, match=_escape(f"derivative for leadfl::{op_name} is not implemented")):
        p[0].sum().backward()


@pytest.mark.parametrize("op_name", list(OPS))
def test_inference_mode_updates_inference_and_normal_tensors(op_name):
    fast, ref, _ = OPS[op_name]
    p, g, t = _good()
    exp_p, exp_t = [x.clone() for x in p], [x.clone() for x in t]
    ref(exp_p, g, exp_t, lr=0.1, alpha=0.4, q=0.2)
    inference_p = _inference(p)
    with torch.inference_mode():
        fast(inference_p, g, t, lr=0.1, alpha=0.4, q=0.2)
    for a, b in zip(inference_p + t, exp_p + exp_t):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_read_only_arguments_may_share_memory():
    """grads and lookahead_grads are only read: one tensor for both is fine."""
    p, g, _ = _good()
    expected = [x.clone() for x in p]
    reference.fused_step_(expected, g, g, lr=0.1, alpha=0.4, q=0.2)
    leadfl_ext.fused_step_(p, g, g, lr=0.1, alpha=0.4, q=0.2)
    for a, b in zip(p, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op_name", list(OPS))
def test_alpha_sharing_memory_with_params_is_refused(op_name):
    fast = OPS[op_name][0]
    x = torch.rand(3, 4)
    alpha = x[:, 0]  # three values in [0, 1) inside params[0]
    before = x.clone()
    with pytest.raises(RuntimeError, match=_escape("params[0] and alpha share memory")):
        fast([x], [torch.randn(3, 4)], [torch.randn(3, 4)], lr=0.1, alpha=alpha, q=0.2)
    assert torch.equal(x, before)


def test_paper_step_with_deltas_aliasing_params_names_both():
    p = torch.randn(1003)
    before = p.clone()
    with pytest.raises(RuntimeError, match=_escape("params[0] and deltas[0] share memory; the op writes params[0]")):
        leadfl_ext.paper_step_(p, torch.randn(1003), p, lr=0.1, alpha=0.4, q=0.2)
    assert torch.equal(p, before)


@pytest.mark.parametrize("op_name", list(OPS))
def test_ops_compile_into_one_graph(op_name):
    """torch.compile traces the ops (fake kernels, functionalisation) and gives eager's result."""
    op = getattr(torch.ops.leadfl, op_name)

    def step(p, g, t):
        op([p], [g], [t], lr=0.1, alpha=0.4, alpha_rows=None, q=0.2)
        return p * 2

    torch._dynamo.reset()
    p, g, t = fresh_inputs([(4, 5)], torch.float32, "cpu", 3)
    p, g, t = p[0], g[0], t[0]
    p2, t2 = p.clone(), t.clone()
    out = torch.compile(step, backend="aot_eager", fullgraph=True)(p, g, t)
    out2 = step(p2, g, t2)
    assert torch.equal(out, out2) and torch.equal(p, p2) and torch.equal(t, t2)
