import pytest
import torch

from sim.attacks.data_poisoning import (
    TRIGGER_PIXELS,
    draw_label_shifts,
    flip_labels,
    mgda_backdoor_weight,
    poison_batch,
    stamp_trigger,
)

HIGH_PIXELS = {(3, 23), (3, 25), (4, 24), (6, 24), (7, 23), (7, 25)}
LOW_PIXELS = {(3, 24), (5, 25), (7, 24)}


def test_trigger_sets_exactly_the_nine_pattern_pixels():
    assert {(r, c) for r, c, high in TRIGGER_PIXELS if high} == HIGH_PIXELS
    assert {(r, c) for r, c, high in TRIGGER_PIXELS if not high} == LOW_PIXELS
    images = torch.full((2, 1, 28, 28), 0.5)
    stamped = stamp_trigger(images, 1.0, 0.0)
    assert torch.equal(images, torch.full((2, 1, 28, 28), 0.5))  # input left untouched
    changed = (stamped != 0.5).nonzero().tolist()
    assert {(r, c) for _, _, r, c in changed} == HIGH_PIXELS | LOW_PIXELS
    assert len(changed) == 2 * 9
    for r, c in HIGH_PIXELS:
        assert stamped[:, 0, r, c].tolist() == [1.0, 1.0]
    for r, c in LOW_PIXELS:
        assert stamped[:, 0, r, c].tolist() == [0.0, 0.0]


def test_trigger_uses_per_channel_values_on_cifar_sized_images():
    images = torch.zeros(1, 3, 32, 32)
    hi = torch.tensor([2.0, 3.0, 4.0])
    lo = torch.tensor([-1.0, -2.0, -3.0])
    stamped = stamp_trigger(images, hi, lo)
    for channel in range(3):
        assert stamped[0, channel, 4, 24].item() == hi[channel].item()
        assert stamped[0, channel, 5, 25].item() == lo[channel].item()
    assert (stamped != 0).sum().item() == 27
    assert stamped[0, :, 8:, :].abs().sum().item() == 0.0


def test_trigger_refuses_images_too_small_for_the_pattern():
    with pytest.raises(ValueError, match="W >= 26"):
        stamp_trigger(torch.zeros(1, 1, 28, 20), 1.0, 0.0)


def test_poisoned_batch_relabels_everything_to_the_target():
    x = torch.rand(4, 1, 28, 28)
    poisoned_x, poisoned_y = poison_batch(x, torch.ones(1), torch.zeros(1), 8)
    assert poisoned_y.tolist() == [8, 8, 8, 8] and poisoned_y.dtype == torch.int64
    assert torch.equal(poisoned_x, stamp_trigger(x, 1.0, 0.0))


# MGDA, worked by hand. With equal losses of 10 both gradients are scaled alike, so the
# branch is decided by a = <gb,gb>, b = <gb,gc>, c = <gc,gc> of the raw vectors.
def mgda(grad_backdoor, grad_clean, loss_backdoor=10.0, loss_clean=10.0):
    return mgda_backdoor_weight(torch.tensor(grad_backdoor), torch.tensor(grad_clean), loss_backdoor, loss_clean)


def test_mgda_backdoor_projection_past_itself_gives_upper_bound():
    # a = 1, b = 1, c = 2: b >= a, the backdoor gradient itself is the min-norm point.
    assert mgda([1.0, 0.0], [1.0, 1.0]) == 0.999


def test_mgda_equal_gradients_take_the_upper_bound_not_nan():
    # a = b = c: the interior formula would divide 0 by 0; the b >= a branch applies first.
    assert mgda([1.0, 2.0], [1.0, 2.0]) == 0.999


def test_mgda_clean_projection_past_itself_gives_lower_bound():
    # a = 2, b = 1, c = 1: b >= c, the clean gradient itself is the min-norm point.
    assert mgda([1.0, 1.0], [1.0, 0.0]) == 0.001


def test_mgda_interior_solution():
    # a = 4, b = 0, c = 1: (c - b) / (a + c - 2b) = 1/5.
    assert mgda([2.0, 0.0], [0.0, 1.0]) == pytest.approx(0.2)
    # a = 1, b = 0, c = 1: equal orthogonal gradients split evenly.
    assert mgda([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.5)


def test_mgda_normalises_each_gradient_by_its_capped_loss():
    # Scales 1 and 0.5: the clean gradient doubles to [0, 2]; a = 1, b = 0, c = 4 -> 4/5.
    assert mgda([1.0, 0.0], [0.0, 1.0], 1.0 - 1e-5, 0.5 - 1e-5) == pytest.approx(0.8)
    # A loss of 100 counts as 10: both normalised gradients are unit vectors -> 1/2.
    assert mgda([10.00001, 0.0], [0.0, 1.0], 100.0, 1.0 - 1e-5) == pytest.approx(0.5)


def test_label_shifts_never_keep_the_true_label_and_follow_the_generator():
    shifts = draw_label_shifts(500, 10, torch.Generator().manual_seed(0))
    assert shifts.min().item() == 1 and shifts.max().item() == 9
    assert torch.equal(shifts, draw_label_shifts(500, 10, torch.Generator().manual_seed(0)))
    y = torch.arange(10)
    for shift in range(1, 10):
        flipped = flip_labels(y, torch.tensor(shift), 10)
        assert (flipped != y).all()
        assert flipped.tolist() == [(label + shift) % 10 for label in range(10)]
