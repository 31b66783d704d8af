"""Main-task accuracy, test loss and backdoor accuracy of a model on the test set."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.attacks.data.registry import metric_name

__all__ = ["attack_metric_name", "evaluate", "trigger_to_target_rate"]


def attack_metric_name(attack_type: str) -> str:
    """What the `backdoor_accuracy` score measures under `attack.type`, for tables and plots: the
    triggered images sent to the target label are a backdoor's success only when the attack trains
    one (`DataPoisoningAttack.trains_backdoor`); otherwise it is the model's trigger-to-target rate."""
    return metric_name(attack_type)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    target_label: int | None = None,
    stamp: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 1000,
) -> dict[str, float | None]:
    """Evaluate ``model`` (already holding the parameters to score) on test tensors ``x, y``.

    Returns ``main_accuracy`` (percent of clean images classified correctly), ``test_loss`` (mean
    cross-entropy per clean image) and ``backdoor_accuracy``: the percent of test images whose
    true label is not ``target_label`` that the model assigns to ``target_label`` once ``stamp``
    has added the trigger. Images of the target class are left out of that share, since calling
    them the target would be correct. ``backdoor_accuracy`` is None when ``target_label`` is None
    or no test image has another label.

    The model is called as it is: the simulator's models use batch-statistics BatchNorm, so
    the scores depend on ``batch_size`` (the triggered batches hold only non-target images).
    """
    _check_batch_size(batch_size)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels; pass matching test tensors")
    if x.shape[0] == 0:
        raise ValueError("the test set is empty; evaluation needs at least one image")
    if target_label is not None and stamp is None:
        raise ValueError("target_label is set but stamp is None; pass the trigger function or target_label=None")

    correct = 0
    loss_sum = 0.0
    for start in range(0, x.shape[0], batch_size):
        images, labels = x[start : start + batch_size], y[start : start + batch_size]
        logits = model(images)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
    total = x.shape[0]
    results: dict[str, float | None] = {
        "main_accuracy": 100.0 * correct / total,
        "test_loss": loss_sum / total,
        "backdoor_accuracy": None,
    }

    if target_label is not None:
        results["backdoor_accuracy"] = trigger_to_target_rate(model, x, y, target_label, stamp, batch_size)
    return results


@torch.no_grad()
def trigger_to_target_rate(model: nn.Module, x: Tensor, y: Tensor, target_label: int,
                           stamp: Callable[[Tensor], Tensor], batch_size: int = 1000) -> float | None:
    """The percent of test images whose true label is not `target_label` that `model` assigns to
    `target_label` once `stamp` has added a trigger (None when no image has another label); the
    triggered batches hold only non-target images."""
    others = x[y != target_label]
    if others.shape[0] == 0:
        return None
    hits = 0
    for start in range(0, others.shape[0], batch_size):
        triggered = stamp(others[start : start + batch_size])
        hits += int((model(triggered).argmax(dim=1) == target_label).sum())
    return 100.0 * hits / others.shape[0]
