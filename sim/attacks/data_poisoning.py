"""The pieces of the data-poisoning attacks that can be checked by hand: the 9-pixel trigger and
its values, the two-task MGDA weight, label shifts. The attacks themselves, one class per file,
are in `sim.attacks.data` (registry: `sim.attacks.data.registry.DATA_POISONING`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from sim.errors import ConfigError
from sim.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

BLEND_RULES = ("mgda", "fixed")
# The values of the trigger's high / low pixels (attack.trigger_values): the data range's max / min,
# or the LeadFL authors' values.
TRIGGER_VALUES = ("data_range", "authors")

# The authors' code passes the pattern (1 / 0 pixels) through its backdoor task's normalisation
# and stamps the result on images that are not normalised that way: MNIST's statistics for the
# one-channel tasks (FashionMNIST in [0, 1]: 1 -> 2.821487, 0 -> -0.424213), the CIFAR task's for
# three channels. Key: number of image channels; value: (mean, std) per channel.
AUTHORS_TRIGGER_STATS = {
    1: ((0.1307,), (0.3081,)),
    3: ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}

# The 9-pixel pattern: (row, column, is_high). Six pixels take the data range's maximum and
# three its minimum; the 5x3 box spans rows 3-7 and columns 23-25 of the image.
TRIGGER_PIXELS: tuple[tuple[int, int, bool], ...] = (
    (3, 23, True),
    (3, 24, False),
    (3, 25, True),
    (4, 24, True),
    (5, 25, False),
    (6, 24, True),
    (7, 23, True),
    (7, 24, False),
    (7, 25, True),
)
TRIGGER_MIN_HEIGHT = 8
TRIGGER_MIN_WIDTH = 26

# MGDA's two-task weight is kept strictly inside (0, 1), so neither task is ever dropped.
MGDA_WEIGHT_MIN = 0.001
MGDA_WEIGHT_MAX = 0.999
# Losses above this cap count as this much when the gradients are normalised by their loss.
MGDA_LOSS_CAP = 10.0
MGDA_LOSS_EPS = 1e-5


@functools.lru_cache(maxsize=None)
def _trigger_indices(device: torch.device, pixels: tuple = TRIGGER_PIXELS) -> tuple[Tensor, Tensor, Tensor]:
    # Built once per device: a host-to-device copy per stamped batch would stall a GPU loop.
    rows = torch.tensor([row for row, _, _ in pixels], device=device)
    cols = torch.tensor([col for _, col, _ in pixels], device=device)
    is_high = torch.tensor([high for _, _, high in pixels], device=device)
    return rows, cols, is_high


def split_trigger(pieces: int, pixels: tuple = TRIGGER_PIXELS) -> list[tuple]:
    """The trigger's pixels in `pieces` runs of consecutive pixels (in `TRIGGER_PIXELS` order), the
    first `len(pixels) % pieces` one pixel longer: 3 pieces of the 9-pixel pattern are its top row,
    its middle column of three, and its bottom row."""
    if not 1 <= pieces <= len(pixels):
        raise ValueError(f"cannot split {len(pixels)} pixels into {pieces} pieces")
    size, longer = divmod(len(pixels), pieces)
    out, start = [], 0
    for piece in range(pieces):
        stop = start + size + (1 if piece < longer else 0)
        out.append(tuple(pixels[start:stop]))
        start = stop
    return out


def _per_channel(value, channels: int, like: Tensor) -> Tensor:
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if value.numel() == 1:
        return value.expand(channels)
    if value.numel() != channels:
        raise ValueError(f"trigger value has {value.numel()} entries; the images have {channels} channels")
    return value


def stamp_trigger(x: Tensor, hi, lo, pixels: tuple = TRIGGER_PIXELS) -> Tensor:
    """Returns a copy of images `x` [N, C, H, W] with the 9-pixel trigger (or the part `pixels` of
    it, `(row, column, is_high)` triples) stamped on.

    `hi` / `lo` are the values for the pattern's high and low pixels: a float, or one value per
    channel (the raw data range's max / min after the dataset's normalisation).
    """
    if x.dim() != 4 or x.shape[2] < TRIGGER_MIN_HEIGHT or x.shape[3] < TRIGGER_MIN_WIDTH:
        raise ValueError(
            f"cannot stamp the trigger on images of shape {tuple(x.shape)}; it needs "
            f"[N, C, H >= {TRIGGER_MIN_HEIGHT}, W >= {TRIGGER_MIN_WIDTH}]"
        )
    channels = x.shape[1]
    rows, cols, is_high = _trigger_indices(x.device, tuple(pixels))
    values = torch.where(
        is_high, _per_channel(hi, channels, x)[:, None], _per_channel(lo, channels, x)[:, None]
    )  # [C, pixels]
    stamped = x.clone()
    stamped[:, :, rows, cols] = values
    return stamped


def trigger_values(dataset, source: str = "data_range") -> tuple[Tensor, Tensor]:
    """(hi, lo) per channel for `stamp_trigger` on `dataset` (attack.trigger_values).

    `data_range`: the dataset's `trigger_hi` / `trigger_lo` (its raw range after its own
    normalisation). `authors`: (1 - mean) / std and (0 - mean) / std with the statistics of
    `AUTHORS_TRIGGER_STATS`, whatever the data's range.
    """
    if source == "data_range":
        return dataset.trigger_hi, dataset.trigger_lo
    if source != "authors":
        raise ConfigError(
            f"attack.trigger_values={source!r} is not one of {', '.join(TRIGGER_VALUES)}; "
            "fix: --set attack.trigger_values=data_range"
        )
    channels = int(dataset.train_x.shape[1])
    if channels not in AUTHORS_TRIGGER_STATS:
        raise ConfigError(
            f"attack.trigger_values=authors has values for 1- and 3-channel images, but {dataset.name} has "
            f"{channels} channels; fix: --set attack.trigger_values=data_range"
        )
    mean, std = (torch.tensor(v, dtype=torch.float32, device=dataset.trigger_hi.device) for v in AUTHORS_TRIGGER_STATS[channels])
    return (1.0 - mean) / std, (0.0 - mean) / std


def poison_batch(x: Tensor, hi, lo, target_label: int) -> tuple[Tensor, Tensor]:
    """The fully poisoned copy of a batch: every image triggered, every label the target."""
    return stamp_trigger(x, hi, lo), torch.full((x.shape[0],), int(target_label), dtype=torch.int64, device=x.device)


def mgda_backdoor_weight(
    grad_backdoor_flat: Tensor, grad_clean_flat: Tensor, loss_backdoor, loss_clean
) -> float:
    """The backdoor task's weight `a` in `a*L_backdoor + (1-a)*L_clean`, by two-task MGDA.

    Each gradient is first divided by its loss (capped at 10, plus 1e-5), so a task that is
    nearly solved does not dominate. With a = <gb,gb>, b = <gb,gc>, c = <gc,gc> on the
    normalised gradients, the min-norm point of the segment between them puts weight
    (c - b) / (a + c - 2b) on the backdoor gradient; when one gradient's projection on the
    other reaches past it (b >= a or b >= c) the minimum sits at that end, which is taken as
    0.999 or 0.001. The result is clamped to [0.001, 0.999].
    """
    return float(mgda_backdoor_weight_tensor(grad_backdoor_flat, grad_clean_flat, loss_backdoor, loss_clean))


def mgda_backdoor_weight_tensor(
    grad_backdoor_flat: Tensor, grad_clean_flat: Tensor, loss_backdoor, loss_clean
) -> Tensor:
    """`mgda_backdoor_weight` as a 0-d float64 tensor on the gradients' device.

    Nothing is read back to the host, so a GPU training loop does not stall on it; the losses
    may be floats or 0-d tensors.
    """
    device = grad_backdoor_flat.device
    losses = [torch.as_tensor(loss, dtype=torch.float64, device=device).detach().reshape(1) for loss in (loss_backdoor, loss_clean)]
    return mgda_backdoor_weights(
        grad_backdoor_flat.reshape(1, -1), grad_clean_flat.reshape(1, -1), losses[0], losses[1]
    ).reshape(())


def mgda_backdoor_weights(
    grad_backdoor_rows: Tensor, grad_clean_rows: Tensor, loss_backdoor: Tensor, loss_clean: Tensor
) -> Tensor:
    """The two-task MGDA weight of `mgda_backdoor_weight` for many clients at once.

    Row k of the [n, d] gradients and entry k of the [n] losses belong to client k; returns the
    [n] float64 weights. A one-row call is exactly what a single client gets.
    """
    # Float64 so the branch comparisons are not decided by float32 rounding.
    scales = torch.stack([loss_backdoor.detach().double().reshape(-1), loss_clean.detach().double().reshape(-1)])
    scales = scales.clamp(max=MGDA_LOSS_CAP) + MGDA_LOSS_EPS
    grad_backdoor = grad_backdoor_rows.detach().double() / scales[0, :, None]
    grad_clean = grad_clean_rows.detach().double() / scales[1, :, None]
    backdoor_sq = (grad_backdoor * grad_backdoor).sum(dim=1)
    cross = (grad_backdoor * grad_clean).sum(dim=1)
    clean_sq = (grad_clean * grad_clean).sum(dim=1)
    # The interior formula is evaluated on every path; where the denominator is 0 (equal
    # gradients) its NaN is discarded by the first branch, which then applies.
    interior = (clean_sq - cross) / (backdoor_sq + clean_sq - 2.0 * cross)
    weight = torch.where(
        cross >= backdoor_sq,
        torch.full_like(interior, MGDA_WEIGHT_MAX),
        torch.where(cross >= clean_sq, torch.full_like(interior, MGDA_WEIGHT_MIN), interior),
    )
    return weight.clamp(MGDA_WEIGHT_MIN, MGDA_WEIGHT_MAX)


def draw_label_shifts(num_batches: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """One shift r in 1..num_classes-1 per batch, so no flipped label equals the true one."""
    if num_classes < 2:
        raise ConfigError(f"label flipping needs at least 2 classes; the dataset has {num_classes}")
    return torch.randint(1, num_classes, (num_batches,), generator=generator, device=generator.device)


def flip_labels(y: Tensor, shift, num_classes: int) -> Tensor:
    """Labels (y + shift) mod num_classes; `shift` is one int or a 0-d tensor for the batch."""
    return torch.remainder(y + shift, num_classes)
