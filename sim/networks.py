"""The networks of the model registry (`sim.models.MODELS`), and the scoring copy of a model.

These classes are built only to train or score: `sim.models` names them and declares their
parameters, so the settings can be checked without importing torch (`sim.lazy`). What holds of
every model (BatchNorm on batch statistics, no buffers, `weight` in the names of the tensors the
client defenses regularise) is said in `sim.models`.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import Tensor, nn


def _conv_bn_relu_pool(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2),
        nn.BatchNorm2d(out_channels, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class FashionMNISTCNN(nn.Module):
    """Two conv5x5-BN-ReLU-maxpool blocks (16, 32 channels) and one linear layer to logits.

    On 1x28x28 inputs with 10 classes it has 29,034 trainable parameters.
    """

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = in_shape
        self.layer1 = _conv_bn_relu_pool(channels, 16)
        self.layer2 = _conv_bn_relu_pool(16, 32)
        self.fc = nn.Linear(32 * (height // 4) * (width // 4), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(x))
        return self.fc(x.flatten(1))


def _conv3_relu_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    # ReLU before BatchNorm, the order of the LeadFL authors' CIFAR-10 model.
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(out_channels, track_running_stats=False),
    ]


class Cifar10CNN(nn.Module):
    """The LeadFL authors' CIFAR-10 network: three pairs of conv3x3-ReLU-BN (32, 64, 128
    channels), each pair followed by maxpool2, then fc1 (-> 128) and fc2 (-> classes).

    Two things differ from a textbook CNN and are kept on purpose: there is no activation
    between fc1 and fc2 (as in the authors' model, so fc2∘fc1 is one linear map of rank <= 128),
    and the output is logits. The authors applied a softmax before the cross-entropy (a double
    softmax); that bug is not reproduced. On 3x32x32 inputs with 10 classes it has 551,466
    trainable parameters.
    """

    def __init__(self, in_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10):
        super().__init__()
        channels, height, width = in_shape
        self.features = nn.Sequential(
            *_conv3_relu_bn(channels, 32),
            *_conv3_relu_bn(32, 32),
            nn.MaxPool2d(2),
            *_conv3_relu_bn(32, 64),
            *_conv3_relu_bn(64, 64),
            nn.MaxPool2d(2),
            *_conv3_relu_bn(64, 128),
            *_conv3_relu_bn(128, 128),
            nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(128 * (height // 8) * (width // 8), 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(self.features(x).flatten(1)))


class MLP(nn.Module):
    """One hidden layer with BatchNorm: small and fast, for tests and smoke runs.

    The BatchNorm keeps it trainable at the same learning rates as the CNNs on raw [0, 1]
    pixels (whose large shared mean otherwise slows plain SGD down) and gives it a scale
    tensor, like the other models.
    """

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, hidden: int = 32):
        super().__init__()
        channels, height, width = in_shape
        self.fc1 = nn.Linear(channels * height * width, hidden)
        self.bn1 = nn.BatchNorm1d(hidden, track_running_stats=False)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.bn1(self.fc1(x.flatten(1)))))


# Images per convolution call when a scoring copy runs on a CPU: the convolution of a whole
# evaluation batch (1,000 images) works out of memory, chunks of this size out of cache.
SCORING_CONV_CHUNK = 100


class _KeptOutputs(nn.Module):
    """A scoring layer that writes its output into tensors it keeps from call to call (one per
    shape): a fresh tensor of a whole batch's activations (tens of MB) comes from the OS as new
    pages, and touching them first costs more than the arithmetic on them. So the output of such
    a layer is valid only until the layer's next call; the scoring forward consumes it before."""

    def __init__(self):
        super().__init__()
        self._kept: dict[tuple, Tensor] = {}

    def kept(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        key = (name, tuple(shape), like.dtype, like.device)
        if key not in self._kept:
            self._kept[key] = like.new_empty(shape)
        return self._kept[key]


class _ChunkedConv2d(_KeptOutputs):
    """A Conv2d run over chunks of the batch, written into one output tensor. Each image's
    output depends on that image alone, and the CPU convolution gives the same values at any
    batch size (tests/sim/test_metrics.py pins this), so the output equals the whole batch's."""

    def __init__(self, conv: nn.Conv2d, chunk: int):
        super().__init__()
        self.conv = conv
        self.chunk = chunk

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.shape[0] <= self.chunk:
            return self.conv(x)  # a GPU's library may pick its algorithm by batch size
        first = self.conv(x[: self.chunk])
        out = self.kept("out", (x.shape[0], *first.shape[1:]), first)
        out[: self.chunk] = first
        for start in range(self.chunk, x.shape[0], self.chunk):
            out[start : start + self.chunk] = self.conv(x[start : start + self.chunk])
        return out


# Inputs on which `exact_batch_norm_kernel` compares leadfl_ext's kernel with ATen's: channel
# counts on both sides of its 4- and 16-channel groups, images of 2 to 196 values, odd and even.
_BATCH_NORM_CHECK_SHAPES = ((37, 5, 3, 3), (64, 16, 7, 7), (23, 19, 5, 6), (30, 32, 14, 14), (9, 3, 2))


@functools.cache
def exact_batch_norm_kernel() -> bool:
    """Whether leadfl_ext's `batch_norm_scoring_` (a batch-statistics BatchNorm forward that
    keeps ATen's per-channel summing order, 4 to 16 channels at a time) and
    `batch_norm_relu_pool_scoring_` (the same, then ReLU and a 2x2 max-pool in one pass) run on
    this CPU and give the bits of `native_batch_norm` (then `relu`, `max_pool2d`) here, on random
    inputs of several shapes. Checked once per
    process, so a CPU without AVX2/FMA or a torch whose kernel rounds otherwise falls back to
    ATen's kernel instead of changing a score."""
    try:
        import leadfl_ext  # noqa: F401  (registers torch.ops.leadfl)

        if not torch.ops.leadfl.batch_norm_scoring_available():
            return False
        kernel = torch.ops.leadfl.batch_norm_scoring_
    except (ImportError, AttributeError, RuntimeError):
        return False
    fused = torch.ops.leadfl.batch_norm_relu_pool_scoring_
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for shape in _BATCH_NORM_CHECK_SHAPES:
            x = torch.randn(shape, generator=generator) * 3.0 + 1.0
            weight, bias = torch.randn(shape[1], generator=generator), torch.randn(shape[1], generator=generator)
            expected = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, 1e-5)[0]
            if not torch.equal(kernel(x, weight, bias, 1e-5, torch.empty_like(x)), expected):
                return False
            if x.dim() == 4:
                pooled = torch.nn.functional.max_pool2d(torch.relu(expected), 2)
                if not torch.equal(fused([x[:5], x[5:]], weight, bias, 1e-5, torch.empty_like(pooled)), pooled):
                    return False
    return True


def _kernel_applies(x: Tensor) -> bool:
    """Whether a scoring layer may hand `x` to leadfl_ext's BatchNorm kernels: a float32 CPU
    tensor, no autograd (the kernels have none), and `exact_batch_norm_kernel()` holds."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and exact_batch_norm_kernel())


class _BatchNormInto(_KeptOutputs):
    """A batch-statistics BatchNorm layer computed into kept tensors, by leadfl_ext's kernel where
    `exact_batch_norm_kernel()` found it to give ATen's bits on this machine, else by ATen's own
    (`native_batch_norm`, its `out=` form)."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        norm = self.norm
        if x.device.type != "cpu" or not x.is_contiguous() or x.numel() <= x.shape[1]:
            return norm(x)  # (one value per channel: the layer's own error)
        channels = (x.shape[1],)
        out = self.kept("out", tuple(x.shape), x)
        if x.numel() > x.shape[0] * x.shape[1] and _kernel_applies(x):
            return torch.ops.leadfl.batch_norm_scoring_(x, norm.weight, norm.bias, norm.eps, out)
        torch.ops.aten.native_batch_norm.out(x, norm.weight, norm.bias, None, None, True, 0.0, norm.eps, out=out,
                                             save_mean=self.kept("mean", channels, x),
                                             save_invstd=self.kept("invstd", channels, x))
        return out


class _MaxPool2x2(_KeptOutputs):
    """max_pool2d(x, 2) as the maximum of the window's four strided views: the same values (a
    maximum does not depend on the order it is taken in; NaN propagates as in max_pool2d),
    without the CPU kernel's per-window loop and index output. With `relu`: ReLU then the
    pooling, computed as the pooling then ReLU on a quarter of the values (the two commute
    exactly, ReLU being monotone)."""

    def __init__(self, relu: bool = False):
        super().__init__()
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        shape = (*x.shape[:-2], height // 2, width // 2)
        top = self.kept("top", shape, x)
        out = self.kept("out", shape, x)
        torch.maximum(x[..., 0:height:2, 0:width:2], x[..., 0:height:2, 1:width:2], out=top)
        torch.maximum(x[..., 1:height:2, 0:width:2], x[..., 1:height:2, 1:width:2], out=out)
        torch.maximum(top, out, out=out)
        return out.relu_() if self.relu else out


class _BatchNormReluPool(nn.Module):
    """BatchNorm (batch statistics), ReLU and a 2x2 max-pool, as they follow one another in a
    model, in one pass of leadfl_ext's `batch_norm_relu_pool_scoring_` where
    `exact_batch_norm_kernel()` holds, into a kept tensor; else the two scoring layers it joins."""

    def __init__(self, norm: _BatchNormInto, pool: _MaxPool2x2):
        super().__init__()
        self.norm = norm
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.is_contiguous() and x.shape[2] >= 2 and x.shape[3] >= 2 and _kernel_applies(x):
            layer = self.norm.norm
            out = self.pool.kept("out", (*x.shape[:2], x.shape[2] // 2, x.shape[3] // 2), x)
            return torch.ops.leadfl.batch_norm_relu_pool_scoring_([x], layer.weight, layer.bias, layer.eps, out)
        return self.pool(self.norm(x))


class _ConvBatchNormReluPool(nn.Module):
    """A chunked convolution followed by BatchNorm, ReLU and a 2x2 max-pool: where the kernel
    holds, the convolution's chunks go to `batch_norm_relu_pool_scoring_` as they are (it sums
    them as one batch, in order), so the whole batch's convolution output is never copied into
    one tensor; else the two scoring layers it joins."""

    def __init__(self, conv: _ChunkedConv2d, rest: _BatchNormReluPool):
        super().__init__()
        self.conv = conv
        self.rest = rest

    def forward(self, x: Tensor) -> Tensor:
        conv, chunk = self.conv.conv, self.conv.chunk
        if x.dim() == 4 and x.shape[0] > chunk and _kernel_applies(x):
            chunks = [conv(x[start : start + chunk]) for start in range(0, x.shape[0], chunk)]
            if chunks[0].shape[2] >= 2 and chunks[0].shape[3] >= 2 and all(c.is_contiguous() for c in chunks):
                layer = self.rest.norm.norm
                out = self.rest.pool.kept("out", (x.shape[0], chunks[0].shape[1], chunks[0].shape[2] // 2,
                                                  chunks[0].shape[3] // 2), chunks[0])
                return torch.ops.leadfl.batch_norm_relu_pool_scoring_(chunks, layer.weight, layer.bias, layer.eps,
                                                                      out)
        return self.rest(self.conv(x))


def _is_plain_2x2_pool(module: nn.Module) -> bool:
    def pair(value):
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    return (type(module) is nn.MaxPool2d and pair(module.kernel_size) == (2, 2) and pair(module.stride) == (2, 2)
            and pair(module.padding) == (0, 0) and pair(module.dilation) == (1, 1) and not module.ceil_mode
            and not module.return_indices)


def _rewrite_for_scoring(module: nn.Module, chunk: int) -> None:
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d:
            setattr(module, name, _ChunkedConv2d(child, chunk))
        elif type(child) in (nn.BatchNorm1d, nn.BatchNorm2d) and not child.track_running_stats:
            setattr(module, name, _BatchNormInto(child))
        elif _is_plain_2x2_pool(child):
            setattr(module, name, _MaxPool2x2())
        else:
            _rewrite_for_scoring(child, chunk)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            if type(module._modules[first]) is nn.ReLU and type(module._modules[second]) is _MaxPool2x2:
                module._modules[first] = nn.Identity()
                module._modules[second] = _MaxPool2x2(relu=True)
        for norm, relu, pool in zip(names, names[1:], names[2:]):
            if (type(module._modules[norm]) is _BatchNormInto and type(module._modules[relu]) is nn.Identity
                    and type(module._modules[pool]) is _MaxPool2x2 and module._modules[pool].relu):
                module._modules[norm] = _BatchNormReluPool(module._modules[norm], module._modules[pool])
                module._modules[pool] = nn.Identity()
        for conv, rest in zip(names, names[1:]):
            if type(module._modules[conv]) is _ChunkedConv2d and type(module._modules[rest]) is _BatchNormReluPool:
                module._modules[conv] = _ConvBatchNormReluPool(module._modules[conv], module._modules[rest])
                module._modules[rest] = nn.Identity()


def scoring_copy(model: nn.Module, *, conv_chunk: int = SCORING_CONV_CHUNK) -> nn.Module:
    """A copy of `model` for scoring: the same parameters in the same order (so
    `load_flat_parameters_` fills it like the model) and, for every input, the same output bit
    for bit, computed faster on a CPU: convolutions over chunks of `conv_chunk` images into one
    buffer (BatchNorm still sees the whole batch), 2x2 max-pooling as a maximum of strided views,
    ReLU moved after a 2x2 max-pool that follows it, batch-statistics BatchNorm (and a ReLU and
    2x2 max-pool after it, in the same pass, fed the convolution's chunks as they are) by
    leadfl_ext's kernels where they give ATen's bits on this machine (`exact_batch_norm_kernel`),
    and the whole-batch activations written into
    tensors kept from one call to the next. So an activation of one call is overwritten by the
    next: the copy is for scoring, whose logits (a Linear layer's fresh output) are used before the
    next batch. `model` is left as it is."""
    scoring = copy.deepcopy(model)
    _rewrite_for_scoring(scoring, conv_chunk)
    return scoring
