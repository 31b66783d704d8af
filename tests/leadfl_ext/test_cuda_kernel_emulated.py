"""The CUDA kernel's indexing, checked without a GPU.

csrc/cuda/leadfl_kernel.cu built with LEADFL_HOST_EMULATION runs every block and thread of every
launch serially on host memory, through the same batching as the real launcher and the same
per-(block, thread) function as the kernel. Called here on CPU tensors and compared with the
reference, it pins down the block-to-tensor search, the chunking, the 16-byte vector path and its
scalar tail, misaligned addresses, per-row alpha across vector boundaries, half/bfloat16
conversion and the launch count. Every tensor is a view with guard elements on both sides, so a
write outside a tensor fails too.
"""
import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from bench.shapes import RESNET18
from leadfl_ext import reference

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None,
                                reason="needs nvcc to build the host emulation of the CUDA kernel")

HESSIAN, PAPER = 0, 1  # leadfl::cuda::Variant
OPS = {"fused_step_": (HESSIAN, reference.fused_step_), "paper_step_": (PAPER, reference.paper_step_)}
KERNEL_DTYPE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}  # leadfl::cuda::Dtype
CHUNK = 16384  # kChunk: elements per block
GUARD = 16     # guard elements on each side; 16 elements keep a view 16-byte aligned in every dtype

LR, ALPHA, Q = 0.1, 0.4, 0.2
ROW_ALPHA = [0.4, 0.0, 0.25, 1.0, 0.0, 0.1]  # rows 1 and 4: plain SGD


class TensorRef(ctypes.Structure):
    """leadfl::cuda::TensorRef."""
    _fields_ = [("w", ctypes.c_void_p), ("g", ctypes.c_void_p), ("third", ctypes.c_void_p),
                ("numel", ctypes.c_int64), ("row_len", ctypes.c_int64), ("dtype", ctypes.c_int)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The tensors here are small: one thread is faster, and far faster on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib_path = tmp_path_factory.mktemp("leadfl_emu") / "libleadfl_emu.so"
    # PTX only for the device part: the emulation never runs it, and skipping ptxas saves seconds.
    cmd = ["nvcc", "-std=c++17", "-O1", "-DLEADFL_HOST_EMULATION", "-arch=compute_90", "-code=compute_90",
           "-cudart", "static", "-Xcompiler", "-fPIC", "-shared", "-Icsrc", "csrc/cuda/leadfl_kernel.cu",
           "-o", str(lib_path)]
    built = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, f"{' '.join(cmd)} failed:\n{built.stderr}"
    lib = ctypes.CDLL(str(lib_path))
    lib.leadfl_emulate_update.restype = ctypes.c_int
    lib.leadfl_emulate_update.argtypes = [ctypes.c_int, ctypes.POINTER(TensorRef), ctypes.c_int64, ctypes.c_double,
                                          ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double,
                                          ctypes.c_double]
    lib.leadfl_emulate_max_tensors_per_launch.restype = ctypes.c_int
    lib.leadfl_emulate_tensor_ref_size.restype = ctypes.c_int64
    assert lib.leadfl_emulate_tensor_ref_size() == ctypes.sizeof(TensorRef), "TensorRef layout changed"
    return lib


def _format_of(t):
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


def emulate(lib, variant, params, grads, thirds, lr, alpha, q, identity=1.0):
    """What leadfl_cuda.cpp hands to launch_update, run by the host emulation; returns the launch count."""
    per_row = isinstance(alpha, torch.Tensor)
    refs = (TensorRef * len(params))()
    for k, (p, g, t) in enumerate(zip(params, grads, thirds, strict=True)):
        # What csrc/checks.h admits: one dense layout (contiguous, channels_last, ...) per index.
        assert p.stride() == g.stride() == t.stride() and p.is_contiguous(memory_format=_format_of(p))
        row_len = p.numel() // p.shape[0] if per_row and p.shape[0] > 0 else 0
        refs[k] = TensorRef(p.data_ptr(), g.data_ptr(), t.data_ptr(), p.numel(), row_len, KERNEL_DTYPE[p.dtype])
    alpha_f32 = alpha.to(torch.float32).contiguous() if per_row else None
    alpha_f64 = alpha.to(torch.float64).contiguous() if per_row else None
    return lib.leadfl_emulate_update(variant, refs, len(params), lr, 0.0 if per_row else alpha,
                                     alpha_f32.data_ptr() if per_row else None,
                                     alpha_f64.data_ptr() if per_row else None, q, identity)


class Guarded:
    """A tensor of `shape` at element `offset` + GUARD of a buffer with GUARD spare elements after it."""

    def __init__(self, values, offset):
        n = values.numel()
        self.buffer = torch.full((GUARD + offset + n + GUARD,), -7.0, dtype=values.dtype)
        self.start = GUARD + offset
        self.view = self.buffer[self.start:self.start + n].view(values.shape)
        self.view.copy_(values)
        assert self.buffer.data_ptr() % 16 == 0
        assert (self.view.data_ptr() % 16 == 0) == (offset * values.element_size() % 16 == 0)
        self.before = self.buffer.clone()

    def assert_guards_intact(self, name):
        n = self.view.numel()
        outside = torch.ones_like(self.buffer, dtype=torch.bool)
        outside[self.start:self.start + n] = False
        assert torch.equal(self.buffer[outside], self.before[outside]), f"{name}: written outside the tensor"


def make_inputs(shape, dtype, variant, offsets, gen):
    """(w, g, third) with every update large against the tolerances, so a skipped element fails.

    |g| in [0.5, 1] outweighs lr*alpha*|R| <= 0.02 for alpha <= 1. The third input puts the clamp
    argument below -q, inside [-q, q] and above q: g~ = g + U(0.5, 1.5) for `hessian`, and
    |D| in [0.3, 1.3] (far from the new D, |D'| <= 0.12) for `paper`.
    """
    def uniform(lo, hi):
        return torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo

    def signs():
        return torch.randint(0, 2, shape, generator=gen).to(torch.float64) * 2 - 1

    w = uniform(-1, 1)
    g = signs() * uniform(0.5, 1.0)
    third = g + uniform(0.5, 1.5) if variant == HESSIAN else signs() * uniform(0.3, 1.3)
    return [Guarded(x.to(dtype), off) for x, off in zip((w, g, third), offsets)]


def tolerances(dtype):
    """(rtol, atol) per element against the reference. float16/bfloat16: one unit in the last place
    of the stored result (the kernel rounds a float result once) against a float64 reference."""
    return {torch.float64: (1e-13, 1e-13), torch.float32: (1e-6, 1e-6),
            torch.float16: (2.0 ** -10, 1e-6), torch.bfloat16: (2.0 ** -7, 1e-6)}[dtype]


NORM_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def run_case(lib, op_name, specs, alpha=ALPHA, seed=0, lr=LR, q=Q, identity=1.0):
    """specs: (shape, dtype, offset) per tensor, offset in elements past a 16-byte boundary (for w,
    or a triple for (w, g, third)). Runs the emulation, checks it and returns the launch count."""
    variant, ref_op = OPS[op_name]
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for shape, dtype, offset in specs:
        offsets = offset if isinstance(offset, tuple) else (offset,) * 3
        tensors.append(make_inputs(shape, dtype, variant, offsets, gen))

    old = [(w.view.clone(), g.view.clone(), t.view.clone()) for w, g, t in tensors]
    # float32/float64 against the reference in the same dtype; half/bfloat16 against float64.
    want = []
    for w, g, t in old:
        ref_dtype = torch.float64 if w.dtype in NORM_TOL else w.dtype
        want.append([x.to(ref_dtype, copy=True) for x in (w, g, t)])
    if want:
        extra = {"identity": identity} if variant == HESSIAN else {}
        ref_op([x[0] for x in want], [x[1] for x in want], [x[2] for x in want], lr=lr, alpha=alpha, q=q, **extra)

    launches = emulate(lib, variant, [x[0].view for x in tensors], [x[1].view for x in tensors],
                       [x[2].view for x in tensors], lr, alpha, q, identity)

    for k, ((w, g, t), (w0, g0, t0), (w_ref, _, t_ref)) in enumerate(zip(tensors, old, want)):
        rtol, atol = tolerances(w.view.dtype)
        outputs = [("params", w.view, w0, w_ref)]
        if variant == PAPER:
            outputs.append(("deltas", t.view, t0, t_ref))
        else:
            assert torch.equal(t.view, t0), f"lookahead_grads[{k}] was written"
        assert torch.equal(g.view, g0), f"grads[{k}] was written"
        for name, got, before, expected in outputs:
            tol = atol + rtol * expected.abs()
            assert bool(((expected - before.to(expected.dtype)).abs() > tol).all()), \
                f"the inputs leave {name}[{k}] unchanged somewhere; pick other inputs"
            bad = ((got.to(expected.dtype) - expected).abs() > tol).flatten().nonzero()
            assert bad.numel() == 0, (
                f"{name}[{k}] (shape {tuple(got.shape)}, {got.dtype}): {bad.numel()} elements off, first at flat "
                f"index {int(bad[0])}: got {got.flatten()[bad[0]].item()}, want {expected.flatten()[bad[0]].item()}")
            if got.dtype in NORM_TOL:
                rel = (got.double() - expected).norm() / expected.norm().clamp_min(1e-30)
                assert rel < NORM_TOL[got.dtype], f"{name}[{k}]: relative error {rel:.2e}"
        for name, x in (("params", w), ("grads", g), ("lookahead_grads/deltas", t)):
            x.assert_guards_intact(f"{name}[{k}]")
    return launches


# -- one dtype, one launch ---------------------------------------------------------------------

SHAPE_LISTS = {
    "one_element": [(1,)],
    "not_multiples_of_the_vector": [(1,), (7,), (4099,), (3, 5), (2, 1, 3)],
    # 40003 spans three chunks with a short last one; the others sit on chunk edges.
    "several_chunks": [(40003,), (CHUNK,), (CHUNK + 1,), (5,), (2 * CHUNK - 1,), (3, 11, 1001)],
    "empty_tensors_in_the_list": [(0,), (5,), (3, 0, 2), (CHUNK + 3,), (0,)],
}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SHAPE_LISTS))
def test_matches_reference(emu, op_name, dtype, case):
    specs = [(shape, dtype, 0) for shape in SHAPE_LISTS[case]]
    assert run_case(emu, op_name, specs, seed=len(case)) == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("identity", [0.0, 0.5])
def test_identity_coefficient_matches_reference(emu, dtype, identity):
    # The `curvature` ablation (identity 0) and another constant, through the hessian kernel.
    specs = [(shape, dtype, 0) for shape in SHAPE_LISTS["several_chunks"]]
    assert run_case(emu, "fused_step_", specs, seed=4, identity=identity) == 1
    alpha = torch.tensor([0.4, 0.0, 0.7])
    assert run_case(emu, "fused_step_", [((3, 4099), dtype, 0), ((3, 5), dtype, 0)], alpha=alpha, seed=5,
                    identity=identity) == 1


@pytest.mark.parametrize("op_name", list(OPS))
def test_empty_lists_launch_nothing(emu, op_name):
    assert run_case(emu, op_name, []) == 0
    assert run_case(emu, op_name, [((0,), torch.float32, 0), ((2, 0), torch.float64, 0)]) == 0


# -- addresses that are not 16-byte aligned -----------------------------------------------------

@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offsets", [(1, 1, 1), (0, 1, 0), (0, 0, 1), (1, 0, 0)],
                         ids=["all", "grad_only", "third_only", "param_only"])
def test_misaligned_views_take_the_scalar_path(emu, op_name, dtype, offsets):
    # One element past a 16-byte boundary in any of the three: the whole chunk goes scalar.
    specs = [((4099,), dtype, offsets), ((40003,), dtype, offsets), ((7,), dtype, offsets), ((5,), dtype, 0)]
    assert run_case(emu, op_name, specs, seed=3) == 1


@pytest.mark.parametrize("op_name", list(OPS))
def test_views_at_a_16_byte_boundary_take_the_vector_path(emu, op_name):
    specs = [((4099,), torch.float32, 4), ((1031,), torch.float64, 2), ((1031,), torch.float16, 8)]
    assert run_case(emu, op_name, specs, seed=4) == 3


# -- memory layouts -------------------------------------------------------------------------------

@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_tensors_give_the_contiguous_result(emu, op_name, dtype):
    """The launcher gets each tensor's first address and numel, so channels_last tensors (what
    the checks admit when all three share the layout) are updated in memory order: the same
    values as the contiguous call, element for element, with a per-row alpha too."""
    variant = OPS[op_name][0]
    shapes = [(6, 16, 5, 5), (6, 3, 7, 9)]
    alpha = torch.tensor(ROW_ALPHA)
    for a in (ALPHA, alpha):
        gen = torch.Generator().manual_seed(8)
        triples = [[x.view.clone() for x in make_inputs(shape, dtype, variant, (0, 0, 0), gen)] for shape in shapes]
        layouts = [[x.contiguous(memory_format=torch.channels_last) for x in triple] for triple in triples]
        assert all(not x.is_contiguous() for triple in layouts for x in triple)
        for tensors in (triples, layouts):
            emulate(emu, variant, [x[0] for x in tensors], [x[1] for x in tensors], [x[2] for x in tensors],
                    LR, a, Q)
        for triple, layout in zip(triples, layouts):
            for want, got in zip(triple, layout):
                assert torch.equal(want, got)


# -- per-row alpha --------------------------------------------------------------------------------

ROW_SHAPES = [(6, 3), (6, 7), (6, 1031), (6,), (6, 2, 3), (6, 7001)]  # (6, 7001): rows across chunks


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_per_row_alpha_rows_across_vectors_and_chunks(emu, op_name, dtype):
    alpha = torch.tensor(ROW_ALPHA, dtype=torch.float64)
    specs = [(shape, dtype, 0) for shape in ROW_SHAPES] + [((6, 7), dtype, 1), ((6, 1031), dtype, (0, 1, 0))]
    assert run_case(emu, op_name, specs, alpha=alpha, seed=5) == 1


@pytest.mark.parametrize("op_name", list(OPS))
def test_per_row_alpha_zero_rows_are_plain_sgd(emu, op_name):
    variant, _ = OPS[op_name]
    gen = torch.Generator().manual_seed(6)
    shapes = [(6, 3), (6, 1031), (6,)]
    params, grads, thirds = zip(*[[x.view for x in make_inputs(s, torch.float64, variant, (0, 0, 0), gen)]
                                  for s in shapes])
    before = [p.clone() for p in params]
    assert emulate(emu, variant, params, grads, thirds, LR, torch.tensor(ROW_ALPHA), Q) == 1
    for p, old, g in zip(params, before, grads):
        for row in (1, 4):
            torch.testing.assert_close(p[row], old[row] - LR * g[row], rtol=1e-15, atol=1e-15)


# -- dtype groups and launch capacity ------------------------------------------------------------

@pytest.mark.parametrize("op_name", list(OPS))
def test_mixed_dtypes_launch_once_per_dtype(emu, op_name):
    two = [((7,), torch.float32, 0), ((4099,), torch.float64, 0), ((40003,), torch.float32, 0),
           ((1,), torch.float64, 1)]
    assert run_case(emu, op_name, two, seed=7) == 2
    four = two + [((33,), torch.float16, 0), ((1031,), torch.bfloat16, 1), ((CHUNK + 9,), torch.float16, 0)]
    assert run_case(emu, op_name, four, seed=8) == 4


@pytest.mark.parametrize("op_name", list(OPS))
def test_mixed_dtypes_with_per_row_alpha(emu, op_name):
    # float32/float16/bfloat16 read the float copy of alpha, float64 the double copy.
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    specs = [(shape, dtypes[k % 4], 0) for k, shape in enumerate(ROW_SHAPES + ROW_SHAPES[:2])]
    assert run_case(emu, op_name, specs, alpha=torch.tensor(ROW_ALPHA), seed=9) == 4


def test_capacity_is_what_the_launcher_reports(emu):
    # Kernel arguments over 4 KB (CUDA 12.1+) carry 256 tensors; older toolkits 48.
    assert emu.leadfl_emulate_max_tensors_per_launch() in (48, 256)


@pytest.mark.parametrize("extra", [0, 1, 44], ids=["capacity", "capacity+1", "300"])
def test_lists_past_the_capacity_are_split(emu, extra):
    capacity = emu.leadfl_emulate_max_tensors_per_launch()
    n = capacity + extra
    specs = [((k % 7 + 1, k % 5 + 1), torch.float32, k % 3) for k in range(n)]
    specs[n // 2] = ((CHUNK + 5,), torch.float32, 0)  # a multi-block tensor among single-block ones
    assert run_case(emu, "fused_step_", specs, seed=10) == math.ceil(n / capacity)


@pytest.mark.parametrize("count", [32, 33])
def test_small_and_large_argument_blocks(emu, count):
    # Up to 32 tensors go in the small argument block, 33 in the large one; both one launch.
    specs = [((k % 9 + 1,), torch.float64, 0) for k in range(count)]
    assert run_case(emu, "paper_step_", specs, seed=count) == 1


def test_two_dtypes_past_the_capacity(emu):
    capacity = emu.leadfl_emulate_max_tensors_per_launch()
    specs = [((k % 4 + 1,), torch.float32 if k % 2 else torch.float64, 0) for k in range(2 * capacity + 2)]
    assert run_case(emu, "paper_step_", specs, seed=11) == 4


def test_resnet18_list_is_one_launch(emu):
    specs = [(shape, torch.float32, 0) for shape in RESNET18]
    assert len(specs) == 62
    assert run_case(emu, "fused_step_", specs, seed=12) == 1
