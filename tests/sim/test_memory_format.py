"""`training.memory_format`: channels_last local training equals the contiguous one.

The sequential engine with `channels_last` keeps the model's conv weights and the image batches
NHWC in memory; only the layout changes, so the updates, the flat vectors and the metrics equal
the contiguous run's up to float rounding, and the default takes exactly the path it always took.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from sim.config import load_config, validate
from sim.data import make_synthetic_dataset, partition
from sim.engines.batched import BatchedEngine
from sim.engines.sequential import SequentialEngine
from sim.errors import ConfigError
from sim.models import build_model, flatten_parameters, memory_format_name
from sim.reporting import read_metrics
from sim.runner import run
from sim.state import read_checkpoint
from simtest import attack_section as attack_section_of

pytestmark = pytest.mark.usefixtures("one_thread")

CL = torch.channels_last
BENIGN_CLIENT, MALICIOUS_CLIENT = 0, 1
# The client defenses of the comparison; every engine run also trains a backdoor (MGDA) client.
DEFENSES = {
    "none": {"type": "none"},
    "ldp": {"type": "ldp"},
    "flwbc": {"type": "flwbc"},
    "leadfl_hessian": {"type": "leadfl", "variant": "hessian"},
    "leadfl_original": {"type": "leadfl", "variant": "original"},
    "leadfl_paper": {"type": "leadfl", "variant": "paper"},
}


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(256, 100, "cpu", seed=0)


@pytest.fixture(scope="module")
def client_indices(dataset):
    return partition(dataset.train_y, 4, "iid", seed=0)  # 64 samples each


def sections(memory_format, defense):
    training = dict(lr=0.05, momentum=0.1, batch_size=16, local_epochs=2, local_steps=None)
    if memory_format is not None:
        training["memory_format"] = memory_format
    attack = dict(type="backdoor", target_label=8, blend="mgda", blend_weight=0.5, boost=1.0)
    client_defense = dict(type="none", noise_scale=0.2, variant="hessian", alpha=0.4, q=0.2)
    client_defense.update(defense)
    return SimpleNamespace(**training), attack_section_of(**attack), SimpleNamespace(**client_defense)


def make_engine(dataset, client_indices, memory_format, defense):
    training, attack, client_defense = sections(memory_format, defense)
    return SequentialEngine("fmnist_cnn", dataset, client_indices, [MALICIOUS_CLIENT], training, attack,
                            client_defense, 0, "cpu")


def two_rounds(engine, start):
    """Both clients' updates in round 0, then in round 1 from the mean of round 0."""
    first = engine.train_clients(start, [BENIGN_CLIENT, MALICIOUS_CLIENT], 0)
    second = engine.train_clients(start + first.mean(0), [BENIGN_CLIENT, MALICIOUS_CLIENT], 1)
    return torch.cat([first, second])


@pytest.mark.parametrize("defense", list(DEFENSES))
def test_channels_last_engine_equals_contiguous_in_float64(float64, client_indices, defense):
    """In float64 the two layouts differ only by summation order (1e-16 relative), far below any
    gradient jump at a ReLU or max-pool tie, so every update must agree to 1e-10: a value paired
    with the wrong element (a gradient in another layout than its parameter) or a flat vector in
    memory order instead of logical order would be off by the size of the update itself."""
    dataset = float64
    start = flatten_parameters(build_model("fmnist_cnn", dataset.image_shape, dataset.num_classes, seed=0)).double()
    contiguous = make_engine(dataset, client_indices, "contiguous", DEFENSES[defense])
    channels_last = make_engine(dataset, client_indices, "channels_last", DEFENSES[defense])
    conv = channels_last.model.layer2[0].weight
    assert conv.is_contiguous(memory_format=CL) and not conv.is_contiguous(), "the model is not in channels_last"
    assert not channels_last.gradients.rows[4].is_contiguous(), "the rows should be views of the NHWC parameters"
    want, got = two_rounds(contiguous, start), two_rounds(channels_last, start)
    assert got.dtype == torch.float64 and got.is_contiguous()
    assert bool((want.abs() > 0).any(dim=1).all()), "a client did not move"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_default_layout_is_the_contiguous_path(dataset, client_indices):
    """`contiguous` (and a training section from before the setting) builds the model as always:
    contiguous parameters, images as gathered, bit-identical updates."""
    start = flatten_parameters(build_model("fmnist_cnn", dataset.image_shape, dataset.num_classes, seed=0))
    updates = []
    for memory_format in ("contiguous", None):
        engine = make_engine(dataset, client_indices, memory_format, DEFENSES["leadfl_hessian"])
        assert all(param.is_contiguous() for param in engine.model.parameters())
        assert engine.gradients.memory_format == torch.contiguous_format and not engine.gradients._reformat
        updates.append(two_rounds(engine, start))
    assert torch.equal(updates[0], updates[1])


# -- whole runs in float32 ----------------------------------------------------------------------

RUN = [
    "data.dataset=synthetic",
    "data.synthetic_train_size=256",
    "data.synthetic_test_size=100",
    "model=fmnist_cnn",
    "clients.num_clients=4",
    "clients.num_malicious=1",
    "clients.clients_per_round=3",
    "selection.schedule=fixed",
    "selection.fixed_malicious=1",
    "attack.type=backdoor",
    "attack.backdoor.blend=mgda",
    "training.local_steps=4",
    "training.batch_size=16",
    "server.aggregator=fedavg",
    "eval.batch_size=50",
]
RUN_DEFENSES = {
    "none": ["client_defense.type=none"],
    "leadfl_hessian": ["client_defense.type=leadfl", "client_defense.variant=hessian"],
    "leadfl_original": ["client_defense.type=leadfl", "client_defense.variant=original"],
}


@pytest.mark.parametrize("defense", list(RUN_DEFENSES))
def test_channels_last_run_matches_contiguous_run(tmp_path, defense):
    """Three rounds of fmnist_cnn in float32 (one MGDA backdoor client each round), in both layouts.

    Tolerances: the layouts sum in another order, and where an activation sits within that
    rounding (about 1e-5 after BatchNorm) of a ReLU's zero or of its max-pool window's other
    maximum, the two runs take different sides of the kink: that batch's gradient then differs
    by up to about 1e-2 in some elements, i.e. a parameter by lr * 1e-2 = 1e-4 per such event
    (measured: 1e-4 to 5e-4 after 20 local steps). atol 2e-3 on the final flat parameters covers
    a handful of events; an element paired with the wrong one, or a vector out of logical order,
    moves parameters by the size of their updates (the relative check). Accuracies may move by
    one test image where a logit pair is that close.
    """
    results = {}
    for memory_format in ("contiguous", "channels_last"):
        overrides = [*RUN, *RUN_DEFENSES[defense], "rounds=3", f"training.memory_format={memory_format}"]
        cfg = load_config(overrides=overrides)
        out = tmp_path / memory_format
        run(cfg, out, progress=False)
        results[memory_format] = (read_checkpoint(out / "checkpoint.pt")["global_params"], read_metrics(out))
    (want, want_rows), (got, got_rows) = results["contiguous"], results["channels_last"]
    start = flatten_parameters(build_model("fmnist_cnn", (1, 28, 28), 10, seed=0))
    assert float((want - start).norm()) > 0.05, "the runs barely trained; the comparison would say nothing"
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)
    assert float((got - want).norm()) < 1e-2 * float((want - start).norm())
    one_image = 100.0 / 100
    for a, b in zip(want_rows, got_rows, strict=True):
        assert a["selected"] == b["selected"] and a["malicious_ids"] == b["malicious_ids"]
        assert abs(a["main_accuracy"] - b["main_accuracy"]) <= one_image + 1e-9
        assert abs(a["backdoor_accuracy"] - b["backdoor_accuracy"]) <= one_image + 1e-9
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)


# -- settings -------------------------------------------------------------------------------------

def test_unknown_memory_format_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="training.memory_format='nhwc' is not one of contiguous, channels_last, auto; "
                                          "fix: --set training.memory_format=contiguous"):
        load_config(overrides=["training.memory_format=nhwc"])


def test_engine_refuses_an_unknown_memory_format(dataset, client_indices):
    with pytest.raises(ConfigError, match="training.memory_format = 'nhwc' is not allowed; allowed: contiguous, "
                                          "channels_last, auto"):
        make_engine(dataset, client_indices, "nhwc", DEFENSES["none"])


def test_batched_engine_refuses_channels_last_before_any_work(dataset, client_indices):
    message = "training.memory_format = 'channels_last' is not allowed with the batched engine"
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["training.memory_format=channels_last", "engine=batched"])
    cfg = load_config(overrides=["training.memory_format=channels_last"])
    with pytest.raises(ConfigError, match=message):  # `auto` picks the batched engine on a GPU
        validate(dataclasses.replace(cfg, engine="auto", device="cuda"))
    training, attack, client_defense = sections("channels_last", DEFENSES["none"])
    with pytest.raises(ConfigError, match=message):
        BatchedEngine("fmnist_cnn", dataset, client_indices, [MALICIOUS_CLIENT], training, attack, client_defense,
                      0, "cpu")


# -- auto ----------------------------------------------------------------------------------------

def test_auto_resolves_by_device_and_engine():
    """`auto`: channels_last for the sequential engine on a CPU, contiguous on any other device or engine;
    `contiguous`/`channels_last` mean themselves on every device."""
    auto = SimpleNamespace(memory_format="auto")
    assert memory_format_name(auto, "cpu") == "channels_last"
    assert memory_format_name(auto, torch.device("cpu")) == "channels_last"
    assert memory_format_name(auto, "cuda") == "contiguous"
    assert memory_format_name(auto, "cuda:1") == "contiguous"
    assert memory_format_name(auto, "cpu", "batched") == "contiguous"
    for name in ("contiguous", "channels_last"):
        assert memory_format_name(SimpleNamespace(memory_format=name), "cuda") == name


def test_auto_run_on_a_cpu_is_the_channels_last_run(tmp_path, capfd):
    """A run with `auto` on the CPU is bit for bit the channels_last run, and says so."""
    results = {}
    for memory_format in ("channels_last", "auto"):
        overrides = [*RUN, *RUN_DEFENSES["leadfl_original"], "rounds=2", f"training.memory_format={memory_format}"]
        out = tmp_path / memory_format
        run(load_config(overrides=overrides), out, progress=False)
        results[memory_format] = (read_checkpoint(out / "checkpoint.pt")["global_params"], read_metrics(out))
    assert torch.equal(results["auto"][0], results["channels_last"][0])
    keys = ("main_accuracy", "backdoor_accuracy", "test_loss")
    assert [[row[k] for k in keys] for row in results["auto"][1]] == \
        [[row[k] for k in keys] for row in results["channels_last"][1]]
    assert "training.memory_format: auto -> channels_last (sequential engine on cpu)" in capfd.readouterr().err


def test_batched_engine_takes_auto_as_contiguous(dataset, client_indices):
    """`auto` passes the batched engine's check (on a GPU `engine: auto` picks it) and trains
    exactly what contiguous trains."""
    cfg = load_config(overrides=["training.memory_format=auto"])
    validate(dataclasses.replace(cfg, engine="auto", device="cuda"))
    validate(dataclasses.replace(cfg, engine="batched"))
    start = flatten_parameters(build_model("fmnist_cnn", dataset.image_shape, dataset.num_classes, seed=0))
    updates = []
    for memory_format in ("contiguous", "auto"):
        training, attack, client_defense = sections(memory_format, DEFENSES["none"])
        engine = BatchedEngine("fmnist_cnn", dataset, client_indices, [MALICIOUS_CLIENT], training, attack,
                               client_defense, 0, "cpu")
        updates.append(engine.train_clients(start, [BENIGN_CLIENT, MALICIOUS_CLIENT], 0))
    assert torch.equal(updates[0], updates[1])


PRESETS_ON_AUTO = ("demo", "table1-fmnist")


@pytest.mark.parametrize("preset", PRESETS_ON_AUTO)
def test_preset_trains_channels_last_on_a_cpu(preset):
    """The presets new experiments start from train with `auto` (channels_last on a CPU)."""
    cfg = load_config(preset=preset)
    assert cfg.training.memory_format == "auto" and cfg.engine == "sequential" and cfg.device == "cpu"


def test_committed_results_keep_the_layout_they_ran_with():
    """Every committed run's recorded config.yaml (the settings it ran with), loaded on its own,
    trains in the layout it records, whatever its preset now says: results made before the presets
    moved to `auto` record contiguous (or predate the setting, which means contiguous) and still
    reproduce with their recorded settings."""
    recorded = sorted((Path(__file__).resolve().parents[2] / "docs" / "results").glob("**/config.yaml"))
    layouts = {}
    for path in recorded:
        layout = yaml.safe_load(path.read_text()).get("training", {}).get("memory_format", "contiguous")
        assert load_config(path=path).training.memory_format == layout, path
        layouts[layout] = layouts.get(layout, 0) + 1
    assert layouts.get("contiguous", 0) > 50, f"the committed results were not found: {layouts}"
    assert set(layouts) <= {"contiguous", "auto"}, layouts
