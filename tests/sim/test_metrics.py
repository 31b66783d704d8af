import math

import pytest
import torch
from torch import nn

from sim import networks
from sim.attacks.data_poisoning import TRIGGER_PIXELS, stamp_trigger
from sim.metrics import Scorer, TestSet, evaluate, margins, score, trigger_to_target_rate
from sim.models import build_model, load_flat_parameters_, scoring_copy

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


# ---------------------------------------------------------------------------------------------
# The run's scorer against the per-batch loop it replaced


def reference_scores(model, x, y, *, target_label, stamp, batch_size):
    """The scoring loop as it was: the model called as it is, one batch after another, the counts
    and the loss read back per batch."""
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            images, labels = x[start : start + batch_size], y[start : start + batch_size]
            logits = model(images)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
        results = {"main_accuracy": 100.0 * correct / x.shape[0], "test_loss": loss_sum / x.shape[0],
                   "backdoor_accuracy": None}
        if target_label is not None:
            others = x[y != target_label]
            if others.shape[0] > 0:
                hits = 0
                for start in range(0, others.shape[0], batch_size):
                    hits += int((model(stamp(others[start : start + batch_size])).argmax(dim=1) == target_label).sum())
                results["backdoor_accuracy"] = 100.0 * hits / others.shape[0]
    return results


def trained_like(model, seed):
    """`model` with random parameters of a trained model's spread, so that the logits are far
    apart and their rounding decides nothing by accident."""
    generator = torch.Generator().manual_seed(seed)
    params = torch.cat([param.detach().reshape(-1) for param in model.parameters()])
    load_flat_parameters_(model, torch.randn(params.shape, generator=generator) * 0.3)
    return model


@pytest.mark.parametrize("name, shape, count, batch_size, target_label", [
    ("fmnist_cnn", (1, 28, 28), 1000, 1000, 8),     # the runs' setting, one 1,000-image batch
    ("fmnist_cnn", (1, 28, 28), 530, 250, 3),       # chunks of 100 and a last of 50; a short last batch
    ("fmnist_cnn", (1, 28, 28), 64, 7, None),       # batches under one chunk; no triggered set
    ("fmnist_cnn", (1, 30, 27), 150, 150, 0),       # odd widths: pooling drops the last column
    ("cifar_cnn", (3, 32, 32), 130, 130, 8),
    ("cifar_cnn", (3, 32, 32), 60, 25, None),
    ("mlp", (1, 28, 28), 300, 128, 8),
])
def test_the_scorer_gives_the_per_batch_loops_scores_bit_for_bit(name, shape, count, batch_size, target_label):
    generator = torch.Generator().manual_seed(count)
    x = torch.randn((count, *shape), generator=generator)
    y = torch.randint(0, 10, (count,), generator=generator)
    model = trained_like(build_model(name, shape, 10, seed=1), seed=count)
    stamp = lambda images: stamp_trigger(images, 2.5, -0.5)  # noqa: E731
    expected = reference_scores(model, x, y, target_label=target_label, stamp=stamp, batch_size=batch_size)
    scorer = Scorer(build_model(name, shape, 10, seed=2),
                    TestSet(x, y, target_label=target_label, stamp=stamp, batch_size=batch_size))
    params = torch.cat([param.detach().reshape(-1) for param in model.parameters()])
    for _ in range(2):  # the batches are reused from one scoring to the next
        scores = scorer(params)
        margin = scores.pop("backdoor_margin")
        assert scores == {**expected, "backdoor_accuracy_pieces": []}  # floats compared exactly
        assert (margin is None) == (expected["backdoor_accuracy"] is None)
    assert evaluate(model, x, y, target_label=target_label, stamp=stamp, batch_size=batch_size) == expected
    if target_label is not None:
        assert expected["backdoor_accuracy"] is not None


@pytest.mark.parametrize("batch_norm_kernel", ["leadfl_ext", "aten"])
@pytest.mark.parametrize("name, shape", [("fmnist_cnn", (1, 28, 28)), ("cifar_cnn", (3, 32, 32))])
def test_the_scoring_copy_gives_the_models_logits_bit_for_bit(name, shape, batch_norm_kernel, monkeypatch):
    if batch_norm_kernel == "aten":
        monkeypatch.setattr(networks, "exact_batch_norm_kernel", lambda: False)
    model = trained_like(build_model(name, shape, 10, seed=0), seed=5)
    copy = scoring_copy(model, conv_chunk=16)
    x = torch.randn((70, *shape), generator=torch.Generator().manual_seed(3))
    x[0, 0, :4, :4] = float("nan")  # a NaN makes its window's maximum NaN either way
    with torch.inference_mode():
        assert torch.equal(copy(x[1:]), model(x[1:]))
        assert torch.equal(copy(x).isnan(), model(x).isnan())
        # the activations it keeps from call to call carry nothing over
        assert torch.equal(copy(-x[1:]), model(-x[1:]))
        assert torch.equal(copy(x[1:]), model(x[1:]))
    # its own parameters, in the model's order, so that a flat vector loads alike
    assert [param.shape for param in copy.parameters()] == [param.shape for param in model.parameters()]
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copy.parameters(), model.parameters()))


def test_the_scoring_batch_norm_kernel_is_used_where_the_cpu_has_it():
    # On an AVX2/FMA CPU with this torch, leadfl_ext's kernel matched ATen's bits on the check's
    # inputs; if a new torch rounds otherwise this fails (scoring then falls back to ATen's kernel).
    import leadfl_ext  # noqa: F401

    assert networks.exact_batch_norm_kernel() == bool(torch.ops.leadfl.batch_norm_scoring_available())


def test_each_trigger_piece_is_scored_as_the_per_batch_loop_scores_it():
    x = torch.randn((530, 1, 28, 28), generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 10, (530,), generator=torch.Generator().manual_seed(5))
    model = trained_like(build_model("fmnist_cnn", (1, 28, 28), 10, seed=1), seed=6)
    with torch.no_grad():  # the class the model favours, so that the rates are not all 0
        target = int(model(x).argmax(dim=1).mode().values)
    pieces = [TRIGGER_PIXELS[:3], TRIGGER_PIXELS[3:]]
    stamps = [lambda images, pixels=pixels: stamp_trigger(images, 9.0, -9.0, pixels) for pixels in pieces]
    expected = [reference_scores(model, x, y, target_label=target, stamp=stamp, batch_size=250)["backdoor_accuracy"]
                for stamp in stamps]
    params = torch.cat([param.detach().reshape(-1) for param in model.parameters()])
    scorer = Scorer(build_model("fmnist_cnn", (1, 28, 28), 10, seed=2),
                    TestSet(x, y, target_label=target, stamp=lambda images: stamp_trigger(images, 2.5, -0.5),
                            batch_size=250, piece_stamps=stamps))
    scores = scorer(params)
    assert scores["backdoor_accuracy_pieces"] == expected
    assert len(set(expected)) == 2  # the pieces score differently, so a mix-up would show
    assert trigger_to_target_rate(model, x, y, target, stamps[1], 250) == expected[1]


def reference_margin(model, x, y, target_label, stamp, batch_size):
    """The backdoor margin transcribed: per triggered image (a non-target image, stamped, in
    batches of `batch_size`), logit[target] minus the largest other logit, averaged in float64."""
    others = x[y != target_label]
    values = []
    with torch.no_grad():
        for start in range(0, others.shape[0], batch_size):
            logits = model(stamp(others[start : start + batch_size])).double().numpy()
            for row in logits:
                rest = [row[c] for c in range(len(row)) if c != target_label]
                values.append(row[target_label] - max(rest))
    return sum(values) / len(values)


@pytest.mark.parametrize("name, shape, count, batch_size, target_label", [
    ("fmnist_cnn", (1, 28, 28), 230, 100, 3),
    ("mlp", (1, 28, 28), 90, 40, 0),
])
def test_the_backdoor_margin_is_the_mean_target_minus_best_other_logit(name, shape, count, batch_size, target_label):
    generator = torch.Generator().manual_seed(count)
    x = torch.randn((count, *shape), generator=generator)
    y = torch.randint(0, 10, (count,), generator=generator)
    model = trained_like(build_model(name, shape, 10, seed=1), seed=count)
    stamp = lambda images: stamp_trigger(images, 2.5, -0.5)  # noqa: E731
    test_set = TestSet(x, y, target_label=target_label, stamp=stamp, batch_size=batch_size)
    params = torch.cat([param.detach().reshape(-1) for param in model.parameters()])
    margin = Scorer(build_model(name, shape, 10, seed=2), test_set)(params)["backdoor_margin"]
    expected = reference_margin(model, x, y, target_label, stamp, batch_size)
    assert margin == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert margin != 0.0
    # The same images with the trigger scored as plain ones give another margin: it reads the stamped batches.
    plain = reference_margin(model, x, y, target_label, lambda images: images, batch_size)
    assert margin != pytest.approx(plain, rel=1e-6, abs=1e-6)
    # score() without margin is unchanged; with it the other scores are the same.
    with_margin = score(model, test_set, margin=True)
    assert with_margin.pop("backdoor_margin") == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert with_margin == score(model, test_set)


def test_the_margin_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0], [4.0, 0.5, -1.0]])
    # target 1: 3 - 2 = 1 and 0.5 - 4 = -3.5
    assert margins(logits, 1).tolist() == [1.0, -3.5]
