"""Settings that pass one by one but fail later, output folders, resuming from the folder alone,
and suggestions that lead to a valid command."""

from __future__ import annotations

import json

import pytest

from sim.cli import main
from sim.config import load_config
from sim.errors import ConfigError
from sim.reporting import read_metrics
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*tiny_synthetic(clients=6, malicious=2, per_round=3, fixed_malicious=1), "server.aggregator=median",
        "rounds=2"]


def flags(*overrides: str) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["training.lr=1e308"], "training.lr=1e+308 is beyond float32's largest value"),
        (["seed=18446744073709551616"], "seed=18446744073709551616 is out of range: it must be in [0, 18446744073709551615]"),
        (["data.dataset=synthetic", "data.synthetic_train_size=1000000000000"], "GiB for the images, more than this machine's"),
        (["client_defense.type=leadfl", "client_defense.alpha=1e308"], "client_defense.alpha=1e+308 is beyond float32's"),
        (["client_defense.type=leadfl", "training.lr=1e20", "client_defense.alpha=1e20"],
         "training.lr * client_defense.alpha = 1e+20 * 1e+20 is beyond float32's largest value"),
        (["attack.boost=1e39"], "attack.boost=1e+39 is beyond float32's largest value"),
    ],
)
def test_values_torch_or_float32_cannot_hold_are_refused_before_anything_is_written(tmp_path, capsys, overrides,
                                                                                   expected):
    out_dir = tmp_path / "run"
    assert main(["run", *flags(*TINY, *overrides), "--out", str(out_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "fix:" in err and err.count("\n") == 1
    assert not out_dir.exists()


def test_the_largest_seed_torch_takes_runs(tmp_path):
    assert main(["run", *flags(*TINY, "rounds=1", "seed=18446744073709551615"), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0


def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("keep me")
    assert main(["run", *flags(*TINY), "--out", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--out {path} is a file, not a folder; fix:" in err and err.count("\n") == 1
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("command", ["run", "compare"])
def test_missing_data_files_leave_no_output_folder(tmp_path, capsys, command):
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  none: {}\n")
    out_dir = tmp_path / "out"
    argv = [command, "--config", str(study), *flags("data.dataset=mnist", f"data.data_dir={tmp_path}"),
            "--out", str(out_dir), "--no-progress"]
    assert main(argv) == 2
    assert "files missing" in capsys.readouterr().err
    assert not out_dir.exists()


def test_missing_fashion_mnist_hint_updates_the_package_lists_first():
    from sim.data import FASHION_MNIST_INSTALL_COMMAND

    assert FASHION_MNIST_INSTALL_COMMAND.startswith("apt-get update && apt-get install -y dataset-fashion-mnist")


def test_resume_from_the_run_folder_alone(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["run", *flags(*TINY), "--out", str(out_dir), "--no-progress"]) == 0
    # Only the folder, and more rounds: the settings come from its config.yaml.
    assert main(["run", "--out", str(out_dir), "--resume", "--rounds", "3", "--no-progress"]) == 0
    assert len(read_metrics(out_dir)) == 3
    capsys.readouterr()
    # A flag that disagrees with the saved run is refused, naming both values.
    assert main(["run", "--out", str(out_dir), "--resume", "--rounds", "4", "--set", "training.lr=0.5",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "training.lr (saved 0.01, requested 0.5)" in err and err.count("\n") == 1
    assert len(read_metrics(out_dir)) == 3


def test_resume_on_another_thread_count_needs_the_override(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["run", *flags(*TINY), "--out", str(out_dir), "--no-progress", "--threads", "1"]) == 0
    assert json.loads((out_dir / "summary.json").read_text())["threads"] == 1
    argv = ["run", "--out", str(out_dir), "--resume", "--rounds", "3", "--no-progress", "--threads", "2"]
    assert main(argv) == 2
    assert "threads (saved 1, now 2)" in capsys.readouterr().err
    assert main([*argv, "--allow-machine-change"]) == 0
    assert json.loads((out_dir / "summary.json").read_text())["threads"] == "mixed (see provenance)"


def test_plot_of_a_comparison_redraws_each_variant_too(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  none: {}\n  ldp: {client_defense.type: ldp}\n")
    out_dir = tmp_path / "study"
    assert main(["compare", "--config", str(study), *flags(*TINY), "--out", str(out_dir), "--no-progress"]) == 0
    for name in ("none", "ldp"):
        (out_dir / name / "accuracy.png").unlink()
    capsys.readouterr()
    assert main(["plot", str(out_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("none", "ldp"):
        assert (out_dir / name / "accuracy.png").is_file() and str(out_dir / name / "accuracy.png") in out


def test_label_flip_tables_and_summaries_do_not_say_backdoor_accuracy(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("compare:\n  none: {}\n")
    out_dir = tmp_path / "study"
    assert main(["compare", "--config", str(study), *flags(*TINY, "attack.type=label_flip"), "--out", str(out_dir),
                 "--no-progress"]) == 0
    assert "backdoor accuracy" not in (out_dir / "table.md").read_text()
    assert "trigger-to-target rate" in (out_dir / "table.md").read_text()
    assert main(["run", *flags(*TINY, "attack.type=label_flip"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "backdoor accuracy" not in printed and "trigger-to-target rate" in printed


@pytest.mark.parametrize(
    "overrides,fix",
    [
        (["client_defense.variant=foo"], "fix: --set client_defense.variant=hessian"),  # the default
        (["client_defense.variant=pape"], "fix: --set client_defense.variant=paper"),  # the close one
        (["clients.num_clients=20", "clients.num_malicious=-1"], "fix: --set clients.num_malicious=5"),
        (["server.aggregator=krum", "clients.clients_per_round=2", "server.f=0"],
         "fix: --set clients.clients_per_round=3"),
    ],
)
def test_suggested_fixes_are_valid(overrides, fix):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    message = str(caught.value)
    assert message.endswith(fix) or fix + ";" in message or fix + "," in message, message
    assert "server.f=0" not in message.split("fix:")[-1]
    # Applying the suggested fix gives a config that validates.
    path_value = fix.split("--set ")[1]
    load_config(overrides=[*overrides, path_value])


def test_an_unknown_preset_suggests_the_closest_not_the_first():
    with pytest.raises(ConfigError) as caught:
        load_config("tabel2-cifar")
    assert str(caught.value).endswith("fix: --preset table2-cifar10")
    with pytest.raises(ConfigError) as caught:
        load_config("randomly")  # nothing close enough for "did you mean", still the closest as the fix
    assert str(caught.value).endswith("fix: --preset random-vs-periodic")
