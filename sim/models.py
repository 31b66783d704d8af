"""Model registry and the flat-vector view of a model's trainable parameters.

Every BatchNorm layer uses the statistics of the batch it sees, in training and in evaluation
(`track_running_stats=False`), as the LeadFL authors' models effectively did (they were never
switched to eval mode). Models therefore carry no buffers, and a model is fully described by
its flat parameter vector: the vector the engine trains and the server aggregates.

Conv and linear weights and BatchNorm scales are registered under names containing `weight`;
biases and BatchNorm shifts are not. The LeadFL `original` variant and the LDP / FL-WBC client
defenses act on exactly the `weight` tensors.

A model is declared here by name (`MODELS`): the network class that builds it (in
`sim.networks`, imported only to build one), the smallest input its pooling accepts and its
trainable parameters' names and shapes for a given input, so the settings that name parameters
(`client_defense.scope`) are checked without building a model or importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from sim.errors import ConfigError
from sim.lazy import nn, no_grad, torch

if TYPE_CHECKING:
    from torch import Tensor


ParameterShapes = list[tuple[str, tuple[int, ...]]]


def _conv(name: str, out_channels: int, in_channels: int, kernel: int) -> ParameterShapes:
    return [(f"{name}.weight", (out_channels, in_channels, kernel, kernel)), (f"{name}.bias", (out_channels,))]


def _linear(name: str, out_features: int, in_features: int) -> ParameterShapes:
    return [(f"{name}.weight", (out_features, in_features)), (f"{name}.bias", (out_features,))]


def _norm(name: str, channels: int) -> ParameterShapes:
    return [(f"{name}.weight", (channels,)), (f"{name}.bias", (channels,))]


def _fmnist_cnn_parameters(in_shape: tuple[int, int, int], num_classes: int) -> ParameterShapes:
    channels, height, width = in_shape
    return [*_conv("layer1.0", 16, channels, 5), *_norm("layer1.1", 16), *_conv("layer2.0", 32, 16, 5),
            *_norm("layer2.1", 32), *_linear("fc", num_classes, 32 * (height // 4) * (width // 4))]


def _cifar_cnn_parameters(in_shape: tuple[int, int, int], num_classes: int) -> ParameterShapes:
    channels, height, width = in_shape
    shapes: ParameterShapes = []
    index = 0  # position in `features`: conv, ReLU, BatchNorm per pair, a max-pool after every two pairs
    for width_out in (32, 32, None, 64, 64, None, 128, 128, None):
        if width_out is None:
            index += 1
            continue
        shapes += _conv(f"features.{index}", width_out, channels, 3) + _norm(f"features.{index + 2}", width_out)
        channels, index = width_out, index + 3
    return [*shapes, *_linear("fc1", 128, 128 * (height // 8) * (width // 8)), *_linear("fc2", num_classes, 128)]


def _mlp_parameters(in_shape: tuple[int, int, int], num_classes: int, hidden: int = 32) -> ParameterShapes:
    channels, height, width = in_shape
    return [*_linear("fc1", hidden, channels * height * width), *_norm("bn1", hidden), *_linear("fc2", num_classes, hidden)]


@dataclass(frozen=True)
class ModelDeclaration:
    network: str  # the class in sim.networks
    min_spatial: int  # the smallest input height and width its pooling stack accepts
    # (C, H, W), classes -> the trainable parameters' names and shapes, in the flat vector's order
    parameters: Callable[[tuple[int, int, int], int], ParameterShapes]


MODELS: dict[str, ModelDeclaration] = {
    "fmnist_cnn": ModelDeclaration("FashionMNISTCNN", 4, _fmnist_cnn_parameters),
    "cifar_cnn": ModelDeclaration("Cifar10CNN", 8, _cifar_cnn_parameters),
    "mlp": ModelDeclaration("MLP", 1, _mlp_parameters),
}


def _checked_shape(name: str, in_shape) -> tuple[int, ...]:
    if name not in MODELS:
        raise ConfigError(
            f"model = {name!r} is not a known model; allowed: {', '.join(MODELS)}. "
            "Set model to one of these."
        )
    in_shape = tuple(int(size) for size in in_shape)
    if len(in_shape) != 3 or min(in_shape[1:]) < MODELS[name].min_spatial:
        raise ConfigError(
            f"model = {name!r} cannot take inputs of shape {in_shape}; it needs (C, H, W) with "
            f"H, W >= {MODELS[name].min_spatial}. Pick a model that fits the dataset."
        )
    return in_shape


def parameter_shapes(name: str, in_shape: tuple[int, int, int], num_classes: int) -> ParameterShapes:
    """The (name, shape) of each trainable parameter of model `name` for inputs `in_shape`, as
    `trainable_parameters(build_model(...))` lists them (tests/sim/test_models.py holds the two
    equal), without building the model."""
    in_shape = _checked_shape(name, in_shape)
    return MODELS[name].parameters(in_shape, int(num_classes))


def build_model(
    name: str, in_shape: tuple[int, int, int], num_classes: int, *, seed: int | None = None
) -> nn.Module:
    """Builds model `name` for inputs of shape `in_shape` (C, H, W) and `num_classes` outputs.

    With `seed`, the initial weights depend only on it (the global torch RNG is left as it was).
    """
    from sim import networks

    in_shape = _checked_shape(name, in_shape)
    network = getattr(networks, MODELS[name].network)
    if seed is None:
        return network(in_shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return network(in_shape, num_classes)


# `training.memory_format`: how a model trained by the sequential engine lays out its 4-D tensors
# (conv weights, image batches) in memory. The values, and so the flat parameter vector, are the
# same either way; the convolutions sum in another order, so results differ by float rounding.
# Each name's torch.memory_format, by its name in torch.
MEMORY_FORMATS: dict[str, str] = {
    "contiguous": "contiguous_format",
    "channels_last": "channels_last",
}
# `auto`: channels_last where the sequential engine trains on a CPU (its convolutions run 1.2-1.8x
# faster there: bench/results/train_step_cpu.md, bench/results/round_cpu.md), contiguous anywhere
# else (the batched engine has no channels_last stacks; on a GPU the layout is not measured). A
# rule of the device and the engine, not a measurement, so a run's rounding never depends on load.
AUTO_MEMORY_FORMAT = "auto"
MEMORY_FORMAT_CHOICES = (*MEMORY_FORMATS, AUTO_MEMORY_FORMAT)


def memory_format_name(training, device="cpu", engine: str = "sequential") -> str:
    """The layout `training.memory_format` trains in with `engine` on `device` (contiguous when
    the section predates the setting; `auto` resolved), or a ConfigError naming the choices."""
    name = getattr(training, "memory_format", "contiguous")
    if name == AUTO_MEMORY_FORMAT:
        # the device's kind from its name (cpu, cuda:1, or a torch.device): no torch import for a check
        return "channels_last" if engine == "sequential" and str(device).split(":")[0] == "cpu" else "contiguous"
    if name not in MEMORY_FORMATS:
        raise ConfigError(
            f"training.memory_format = {name!r} is not allowed; allowed: {', '.join(MEMORY_FORMAT_CHOICES)}. "
            "Set training.memory_format=contiguous."
        )
    return name


def memory_format_of(training, device="cpu") -> torch.memory_format:
    """The torch memory format `training.memory_format` names on `device` (`memory_format_name`)."""
    return getattr(torch, MEMORY_FORMATS[memory_format_name(training, device)])


def in_layout(tensor: Tensor, like: Tensor) -> Tensor:
    """`tensor` with the memory layout of `like` (same shape): itself when the two already lay
    out their elements alike (equal strides on every dimension of more than one element), else a
    copy in `like`'s layout. What the leadfl_ext ops need of the tensors they pair with a parameter."""
    if all(tensor.stride(d) == like.stride(d) for d in range(like.dim()) if like.size(d) > 1):
        return tensor
    return torch.empty_like(like).copy_(tensor)


def trainable_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The (name, tensor) pairs that make up the flat parameter vector, in its order."""
    return [(name, param) for name, param in module.named_parameters() if param.requires_grad]


def batchnorm_layers(module: nn.Module) -> int:
    """How many BatchNorm layers the module holds (each had a `num_batches_tracked` counter in
    the LeadFL code's models)."""
    return sum(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in module.modules())


def num_trainable_parameters(module: nn.Module) -> int:
    return sum(param.numel() for _, param in trainable_parameters(module))


def flatten_parameters(module: nn.Module) -> Tensor:
    """A new flat float vector of the module's trainable parameters."""
    return torch.cat([param.detach().reshape(-1) for _, param in trainable_parameters(module)])


@no_grad
def load_flat_parameters_(module: nn.Module, flat: Tensor) -> None:
    """Copies `flat` into the module's trainable parameters in place."""
    params = [param for _, param in trainable_parameters(module)]
    expected = sum(param.numel() for param in params)
    if flat.dim() != 1 or flat.numel() != expected:
        raise ValueError(
            f"parameter vector has shape {tuple(flat.shape)}; this model needs a 1-D vector of "
            f"{expected} values."
        )
    chunks = torch.split(flat, [param.numel() for param in params])
    torch._foreach_copy_(params, [chunk.view_as(param) for chunk, param in zip(chunks, params)])


def scoring_copy(model: nn.Module, **options) -> nn.Module:
    """`sim.networks.scoring_copy`: a copy of `model` that scores the same, faster on a CPU."""
    from sim import networks

    return networks.scoring_copy(model, **options)
