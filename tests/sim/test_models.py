import pytest
import torch

from sim.errors import ConfigError
from sim.models import (
    MODELS,
    build_model,
    flatten_parameters,
    load_flat_parameters_,
    num_trainable_parameters,
    parameter_shapes,
    trainable_parameters,
)


def test_fmnist_cnn_has_the_papers_29034_parameters_and_logit_outputs():
    model = build_model("fmnist_cnn", (1, 28, 28), 10)
    assert num_trainable_parameters(model) == 29_034
    weight_elements = sum(p.numel() for name, p in model.named_parameters() if "weight" in name)
    assert weight_elements == 28_928  # conv/linear weights and the 48 BatchNorm scales
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_cifar_cnn_matches_the_authors_layout_without_the_final_softmax():
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    assert num_trainable_parameters(model) == 551_466
    weight_elements = sum(p.numel() for name, p in model.named_parameters() if "weight" in name)
    assert weight_elements == 550_432
    logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 10)
    assert not torch.allclose(logits.sum(1), torch.ones(4))  # logits, not probabilities
    # No activation between fc1 and fc2: the head is affine in fc1's input.
    features = torch.randn(3, model.fc1.in_features)
    head = lambda f: model.fc2(model.fc1(f))
    assert torch.allclose(head(2 * features), 2 * head(features) - head(torch.zeros_like(features)), atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_have_no_buffers_and_use_batch_statistics_in_eval_mode(name):
    shape = (3, 32, 32) if name == "cifar_cnn" else (1, 28, 28)
    model = build_model(name, shape, 10).eval()
    assert list(model.buffers()) == []
    for module_name, param in model.named_parameters():
        leaf = module_name.rsplit(".", 1)[1]
        assert leaf in ("weight", "bias")
    batch = torch.randn(6, *shape)
    alone = model(batch[:2])
    together = model(batch)[:2]
    assert not torch.allclose(alone, together)  # BatchNorm normalised with each batch


def test_build_model_seed_fixes_the_initial_weights_without_touching_the_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = flatten_parameters(build_model("fmnist_cnn", (1, 28, 28), 10, seed=7))
    assert torch.equal(torch.rand(1), expected_next)
    second = flatten_parameters(build_model("fmnist_cnn", (1, 28, 28), 10, seed=7))
    third = flatten_parameters(build_model("fmnist_cnn", (1, 28, 28), 10, seed=8))
    assert torch.equal(first, second) and not torch.equal(first, third)


def test_flat_parameter_vector_round_trips():
    model = build_model("mlp", (1, 28, 28), 10, seed=0)
    vector = torch.randn(num_trainable_parameters(model))
    load_flat_parameters_(model, vector)
    assert torch.equal(flatten_parameters(model), vector)
    with pytest.raises(ValueError, match="needs a 1-D vector"):
        load_flat_parameters_(model, vector[:-1])


def test_unknown_model_and_unfit_input_are_config_errors():
    with pytest.raises(ConfigError, match="fmnist_cnn, cifar_cnn, mlp"):
        build_model("resnet18", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="cannot take inputs"):
        build_model("cifar_cnn", (3, 4, 4), 10)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_shape, num_classes", [((1, 28, 28), 10), ((3, 32, 32), 10), ((2, 19, 30), 3), ((3, 8, 9), 7)])
def test_declared_parameter_shapes_are_the_built_models(name, in_shape, num_classes):
    """The names and shapes the settings are checked against (nothing built) are the model's own,
    in the flat vector's order."""
    with torch.device("meta"):
        model = build_model(name, in_shape, num_classes)
    built = [(param_name, tuple(param.shape)) for param_name, param in trainable_parameters(model)]
    assert parameter_shapes(name, in_shape, num_classes) == built


def test_declared_parameter_shapes_refuse_what_building_refuses():
    for name, in_shape in (("resnet18", (1, 28, 28)), ("cifar_cnn", (3, 4, 4)), ("fmnist_cnn", (1, 3, 28))):
        with pytest.raises(ConfigError) as building:
            build_model(name, in_shape, 10)
        with pytest.raises(ConfigError) as declared:
            parameter_shapes(name, in_shape, 10)
        assert str(declared.value) == str(building.value)
