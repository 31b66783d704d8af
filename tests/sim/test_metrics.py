import math

import pytest
import torch
from torch import nn

from sim.metrics import evaluate

TARGET = 2


def three_class_model():
    """logits = (x0, x1, 0.5): class 2 wins when both features are below 0.5."""
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    return model


def clear_first_feature(x):
    triggered = x.clone()
    triggered[:, 0] = 0.0
    return triggered


# image          label  prediction (logits)          clean    triggered (x0 = 0) -> prediction
# (1, 0)         0      0 (1, 0, .5)                 right    (0, 0) -> 2: hit
# (0, 1)         1      1 (0, 1, .5)                 right    (0, 1) -> 1: miss
# (0, 0)         2      2 (0, 0, .5)                 right    target class: left out
# (1, 0)         1      0 (1, 0, .5)                 wrong    (0, 0) -> 2: hit
# (0, 0)         0      2 (0, 0, .5)                 wrong    (0, 0) -> 2: hit
TEST_X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
TEST_Y = torch.tensor([0, 1, 2, 1, 0])


def cross_entropy(logits, label):
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_evaluate_reports_accuracy_loss_and_backdoor_accuracy(batch_size):
    results = evaluate(
        three_class_model(), TEST_X, TEST_Y, target_label=TARGET, stamp=clear_first_feature, batch_size=batch_size
    )
    # 3 of 5 right
    assert results["main_accuracy"] == pytest.approx(60.0)
    # 3 hits among the 4 non-target images; counting the target-class image would give 4 / 5 = 80
    assert results["backdoor_accuracy"] == pytest.approx(75.0)
    expected_loss = (
        cross_entropy([1, 0, 0.5], 0)
        + cross_entropy([0, 1, 0.5], 1)
        + cross_entropy([0, 0, 0.5], 2)
        + cross_entropy([1, 0, 0.5], 1)
        + cross_entropy([0, 0, 0.5], 0)
    ) / 5
    assert results["test_loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_backdoor_accuracy_is_none_without_a_target():
    results = evaluate(three_class_model(), TEST_X, TEST_Y, target_label=None)
    assert results["backdoor_accuracy"] is None
    assert results["main_accuracy"] == pytest.approx(60.0)


def test_backdoor_accuracy_is_none_when_every_image_has_the_target_label():
    x, y = TEST_X[2:3], TEST_Y[2:3]
    results = evaluate(three_class_model(), x, y, target_label=TARGET, stamp=clear_first_feature)
    assert results["backdoor_accuracy"] is None


def test_evaluate_does_not_change_the_test_images():
    x = TEST_X.clone()
    evaluate(three_class_model(), x, TEST_Y, target_label=TARGET, stamp=clear_first_feature, batch_size=2)
    assert torch.equal(x, TEST_X)


def test_a_target_without_a_trigger_is_refused():
    with pytest.raises(ValueError, match="stamp"):
        evaluate(three_class_model(), TEST_X, TEST_Y, target_label=TARGET)
