"""`compare` over several seeds (means, Student-t intervals, paired differences) and with `--jobs`."""

from __future__ import annotations

import json

import pytest
import torch

from sim.cli import main
from sim.config import parse_seeds
from sim.errors import ConfigError
from sim.reporting import TIMING_COLUMNS, read_metrics
from sim.stats import mean_interval
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*tiny_synthetic(clients=6, malicious=2, per_round=3, fixed_malicious=1), "server.aggregator=median",
        "rounds=2", "selection.schedule=random"]
VARIANTS = ("no-defense", "LDP")


def flags(*extra: str) -> list[str]:
    out = []
    for override in [*TINY, *extra]:
        out += ["--set", override]
    return out


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("compare:\n  no defense: {client_defense.type: none}\n"
                    "  LDP: {client_defense.type: ldp, client_defense.noise_scale: 0.1}\n")
    return path


def maths_of(folder) -> list[dict]:
    """metrics.csv without the columns that measure the machine."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_metrics(folder)]


@pytest.mark.parametrize("text,seeds", [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("0-2,7", [0, 1, 2, 7]),
                                        (3, [3]), ([4, 1], [4, 1])])
def test_seed_lists_are_read_from_ranges_and_lists(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text,message", [("3-1", "not a seed or a range"), ("a", "not a seed or a range"),
                                          ("0,1,1", "seed 1 appears twice"), ("-2", "not a seed or a range")])
def test_bad_seed_lists_are_refused_with_a_fix(text, message):
    with pytest.raises(ConfigError, match=f"{message}.*fix: "):
        parse_seeds(text)


def test_many_seed_compare_writes_every_seed_means_intervals_and_paired_differences(tmp_path, study, capsys):
    out_dir = tmp_path / "cmp"
    command = ["compare", "--config", str(study), *flags(), "--seeds", "0,1", "--jobs", "1", "--out", str(out_dir),
               "--no-progress"]
    assert main(command) == 0
    summaries = {(seed, folder): json.loads((out_dir / f"seed{seed}" / folder / "summary.json").read_text())
                 for seed in (0, 1) for folder in VARIANTS}
    assert {summary["settings"]["seed"] for (seed, _), summary in summaries.items() if seed == 1} == {1}

    # Variants of one seed face the same selections; the two seeds select differently.
    selected = {key: [row["selected"] for row in read_metrics(out_dir / f"seed{key[0]}" / key[1])]
                for key in summaries}
    assert selected[0, "no-defense"] == selected[0, "LDP"] and selected[1, "no-defense"] == selected[1, "LDP"]
    assert selected[0, "no-defense"] != selected[1, "no-defense"]

    comparison = json.loads((out_dir / "comparison.json").read_text())
    assert comparison["seeds"] == [0, 1]
    ldp = comparison["variants"]["LDP"]
    for metric in ("final_main_accuracy", "mean_backdoor_accuracy", "final_backdoor_accuracy"):
        values = [summaries[seed, "LDP"][metric] for seed in (0, 1)]
        expected = mean_interval(values)
        record = ldp["estimates"][metric]
        assert record["values"] == {"0": values[0], "1": values[1]}
        assert record["mean"] == pytest.approx(expected.mean) and record["n"] == 2
        assert record["half_width"] == pytest.approx(expected.half_width)
        differences = [summaries[seed, "LDP"][metric] - summaries[seed, "no-defense"][metric] for seed in (0, 1)]
        paired = mean_interval(differences)
        assert ldp["differences"][metric]["mean"] == pytest.approx(paired.mean)
        assert ldp["differences"][metric]["half_width"] == pytest.approx(paired.half_width)
    assert "differences" not in comparison["variants"]["no defense"]
    assert ldp["runs"]["1"]["summary"]["final_main_accuracy"] == summaries[1, "LDP"]["final_main_accuracy"]

    table = (out_dir / "table.md").read_text()
    assert "2 seeds (0, 1)" in table and "Student-t 95% interval" in table
    main_final = ldp["estimates"]["final_main_accuracy"]
    difference = ldp["differences"]["final_main_accuracy"]
    assert (f"| LDP | 2 | {main_final['mean']:.1f} ± {main_final['half_width']:.1f} | "
            f"{difference['mean']:+.1f} ± {difference['half_width']:.1f} |") in table
    assert (out_dir / "comparison.png").is_file()

    # Resuming reads every finished run back; `plot` redraws the banded figure.
    table_before = table
    assert main([*command, "--resume"]) == 0
    assert (out_dir / "table.md").read_text() == table_before
    (out_dir / "comparison.png").unlink()
    assert main(["plot", str(out_dir)]) == 0
    assert (out_dir / "comparison.png").is_file()
    # A second start without --resume refuses before running anything.
    capsys.readouterr()
    assert main(command) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_jobs_2_gives_the_metrics_of_jobs_1(tmp_path, study):
    runs = {}
    for jobs in (1, 2):
        out_dir = tmp_path / f"jobs{jobs}"
        assert main(["compare", "--config", str(study), *flags(), "--seeds", "0-1", "--jobs", str(jobs),
                     "--out", str(out_dir), "--no-progress"]) == 0
        runs[jobs] = out_dir
    for seed in (0, 1):
        for folder in VARIANTS:
            assert maths_of(runs[2] / f"seed{seed}" / folder) == maths_of(runs[1] / f"seed{seed}" / folder)
    # --jobs 2 ran separate processes (they leave a log); the tables agree.
    assert (runs[2] / "seed0" / "LDP" / "log.txt").is_file() and not (runs[1] / "seed0" / "LDP" / "log.txt").exists()
    first = json.loads((runs[1] / "comparison.json").read_text())
    second = json.loads((runs[2] / "comparison.json").read_text())
    assert first["variants"]["LDP"]["estimates"] == second["variants"]["LDP"]["estimates"]


def test_seeds_from_the_config_file_and_a_single_seed_overriding_them(tmp_path, study, capsys):
    study.write_text(study.read_text() + "seeds: 2-3\n")
    out_dir = tmp_path / "cmp"
    assert main(["compare", "--config", str(study), *flags(), "--jobs", "1", "--out", str(out_dir),
                 "--no-progress"]) == 0
    assert json.loads((out_dir / "comparison.json").read_text())["seeds"] == [2, 3]
    assert (out_dir / "seed3" / "LDP" / "metrics.csv").is_file()

    single = tmp_path / "single"
    assert main(["compare", "--config", str(study), *flags(), "--seed", "3", "--jobs", "1", "--out", str(single),
                 "--no-progress"]) == 0
    assert "seeds" not in json.loads((single / "comparison.json").read_text())
    assert maths_of(single / "LDP") == maths_of(out_dir / "seed3" / "LDP")

    capsys.readouterr()
    assert main(["compare", "--config", str(study), *flags(), "--seed", "3", "--seeds", "0-1", "--out",
                 str(tmp_path / "x")]) == 2
    assert "fix: drop one of them" in capsys.readouterr().err
    assert main(["compare", "--config", str(study), *flags(), "--seeds", "1-0", "--out", str(tmp_path / "x")]) == 2
    assert "not a seed or a range" in capsys.readouterr().err


def test_a_failed_run_under_jobs_names_its_log_and_exits_1(tmp_path, study, capsys):
    # The dataset files are there (so validation passes) but unreadable: each run process stops at
    # loading them.
    study.write_text(study.read_text().replace("no defense", "none"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (broken / name).write_bytes(b"not an IDX file")
    out_dir = tmp_path / "cmp"
    argv = ["compare", "--config", str(study), *flags("data.dataset=fashion_mnist", f"data.data_dir={broken}"),
            "--jobs", "2", "--out", str(out_dir), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "2 of 2 runs failed" in err and str(out_dir / "LDP" / "log.txt") in err and "--resume" in err


def test_a_single_run_on_a_cpu_defaults_to_one_thread_and_records_it(tmp_path):
    torch.set_num_threads(2)  # the one_thread fixture restores the count afterwards
    out_dir = tmp_path / "run"
    assert main(["run", *flags(), "--out", str(out_dir), "--no-progress"]) == 0
    assert torch.get_num_threads() == 1
    assert json.loads((out_dir / "summary.json").read_text())["threads"] == 1


def test_a_stopped_comparison_resumes_from_its_folder_alone(tmp_path, study):
    out_dir = tmp_path / "cmp"
    assert main(["compare", "--config", str(study), *flags(), "--seeds", "0,1", "--jobs", "1", "--out", str(out_dir),
                 "--no-progress"]) == 0
    finished = maths_of(out_dir / "seed0" / "LDP")
    # Stopped before the last run finished: its folder is gone, the rest stays.
    for path in sorted((out_dir / "seed1" / "LDP").iterdir()):
        path.unlink()
    (out_dir / "seed1" / "LDP").rmdir()
    (out_dir / "table.md").unlink()
    # No --preset, --config or --set: the settings, variants and seeds come from the folder.
    assert main(["compare", "--out", str(out_dir), "--resume", "--jobs", "1", "--no-progress"]) == 0
    assert maths_of(out_dir / "seed0" / "LDP") == finished
    assert (out_dir / "seed1" / "LDP" / "metrics.csv").is_file()
    assert json.loads((out_dir / "comparison.json").read_text())["seeds"] == [0, 1]
    assert "LDP" in (out_dir / "table.md").read_text()


def test_resume_from_a_folder_without_a_comparison_record_says_what_to_give(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "fix: give the --preset/--config" in capsys.readouterr().err


def test_caption_counts_one_seed_in_the_singular():
    from sim.compare import caption_for
    from sim.config import load_config

    cfg = load_config(preset="demo")
    assert caption_for(cfg, [3]).endswith("1 seed (3).")
    assert caption_for(cfg, [0, 1, 2]).endswith("3 seeds (0-2).")


def test_many_seed_compare_estimates_the_attack_effect_when_it_is_measured(tmp_path, study):
    out_dir = tmp_path / "cmp"
    command = ["compare", "--config", str(study), *flags("metrics.attack_effect=true"), "--seeds", "0,1",
               "--jobs", "1", "--out", str(out_dir), "--no-progress"]
    assert main(command) == 0
    effect = {(seed, folder): json.loads((out_dir / f"seed{seed}" / folder / "summary.json").read_text())["attack_effect"]
              for seed in (0, 1) for folder in VARIANTS}
    comparison = json.loads((out_dir / "comparison.json").read_text())
    ldp = comparison["variants"]["LDP"]
    for metric in ("mean_decay_ratio", "mean_uniform_share", "final_norm"):
        # A seed without benign rounds has no decay ratio: the estimate is over the seeds that have one.
        values = [effect[seed, "LDP"][metric] for seed in (0, 1) if effect[seed, "LDP"][metric] is not None]
        record = ldp["attack_effect"][metric]
        assert record["n"] == len(values) and record["mean"] == pytest.approx(mean_interval(values).mean)
        differences = [effect[seed, "LDP"][metric] - effect[seed, "no-defense"][metric] for seed in (0, 1)
                       if effect[seed, "LDP"][metric] is not None and effect[seed, "no-defense"][metric] is not None]
        paired = ldp["attack_effect_differences"][metric]
        assert paired["n"] == len(differences) and paired["mean"] == pytest.approx(mean_interval(differences).mean)
    assert ldp["attack_effect"]["final_norm"]["n"] == 2
    norm, shift = ldp["attack_effect"]["final_norm"], ldp["attack_effect_differences"]["final_norm"]
    table = (out_dir / "table.md").read_text()
    assert "Attack effect (`metrics.attack_effect`" in table and "‖δ‖ final" in table
    row = next(line for line in table.splitlines() if line.startswith("| LDP |") and "±" in line and
               line.count("|") == 8)
    assert row.endswith(f"| {norm['mean']:.2f} ± {norm['half_width']:.2f} | "
                        f"{shift['mean']:+.2f} ± {shift['half_width']:.2f} |")

    # Without the attack effect the table has no such section.
    plain = tmp_path / "plain"
    assert main(["compare", "--config", str(study), *flags(), "--seeds", "0,1", "--jobs", "1", "--out", str(plain),
                 "--no-progress"]) == 0
    assert "Attack effect" not in (plain / "table.md").read_text()
    assert "attack_effect" not in json.loads((plain / "comparison.json").read_text())["variants"]["LDP"]
