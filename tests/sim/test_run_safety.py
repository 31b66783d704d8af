"""A run folder is never silently corrupted: checkpoints are verified and never run code, a bad
aggregate is rejected and recorded, and a resume on other machine facts is refused."""

from __future__ import annotations

import builtins
import hashlib
import json

import pytest
import torch

from sim.cli import main
from sim.config import load_config
from sim.errors import ConfigError
from sim.reporting import read_metrics
from sim.runner import run
from sim.state import encode_checkpoint, read_checkpoint
from simtest import tiny_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*tiny_synthetic(clients=6, malicious=2, per_round=3, fixed_malicious=1), "server.aggregator=median"]


def tiny_config(*extra: str):
    return load_config(overrides=[*TINY, *extra])


def folder_digest(folder) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped after 2 of its rounds (its files are copied by each test that changes them)."""
    folder = tmp_path_factory.mktemp("runs") / "stopped"
    torch.set_num_threads(1)
    run(tiny_config("rounds=2"), folder, progress=False)
    return folder


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for path in stopped_run.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


class _WritesAFile:
    """Unpickling this object would create `marker`: the kind of payload a checkpoint must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.mark.parametrize("with_header", [True, False])
def test_a_checkpoint_holding_code_is_refused_and_not_run(run_copy, tmp_path, with_header):
    marker = tmp_path / "marker"
    checkpoint = read_checkpoint(run_copy / "checkpoint.pt")
    checkpoint["upload_state"] = _WritesAFile(marker)
    if with_header:  # a valid checksum does not make a payload trusted
        (run_copy / "checkpoint.pt").write_bytes(encode_checkpoint(checkpoint))
    else:
        torch.save(checkpoint, run_copy / "checkpoint.pt")
    before = folder_digest(run_copy)
    with pytest.raises(ConfigError) as caught:
        run(tiny_config("rounds=3"), run_copy, resume=True, progress=False)
    assert not marker.exists()
    assert str(run_copy / "checkpoint.pt") in str(caught.value) and "fix:" in str(caught.value)
    assert folder_digest(run_copy) == before


def _flip_one_byte(data: bytes) -> bytes:
    position = len(data) * 2 // 3  # inside the payload
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1:]


def _with_wrong_shape(data: bytes) -> bytes:
    checkpoint = read_checkpoint_bytes(data)
    checkpoint["global_params"] = torch.zeros(7)
    return encode_checkpoint(checkpoint)


def _without_rows(data: bytes) -> bytes:
    checkpoint = read_checkpoint_bytes(data)
    del checkpoint["rows"]
    return encode_checkpoint(checkpoint)


def read_checkpoint_bytes(data: bytes) -> dict:
    import io

    return torch.load(io.BytesIO(data.partition(b"\n")[2]), weights_only=True)


DAMAGE = {
    "truncated": (lambda data: data[: len(data) // 2], "checksum does not match"),
    "empty": (lambda data: b"", "empty"),
    "text": (lambda data: b"hello, this is not a checkpoint\n", "header"),
    "one flipped byte": (_flip_one_byte, "checksum does not match"),
    "wrong shape": (_with_wrong_shape, "parameters"),
    "missing key": (_without_rows, "'rows' is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_in_one_line_with_exit_2_and_nothing_touched(run_copy, capsys, damage):
    change, reason = DAMAGE[damage]
    path = run_copy / "checkpoint.pt"
    path.write_bytes(change(path.read_bytes()))
    before = folder_digest(run_copy)
    flags = [item for override in [*TINY, "rounds=3"] for item in ("--set", override)]
    assert main(["run", *flags, "--out", str(run_copy), "--resume", "--no-progress", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and str(path) in err and reason in err and "fix:" in err
    assert folder_digest(run_copy) == before


def test_a_checkpoint_that_disagrees_with_metrics_csv_is_refused(run_copy):
    metrics = run_copy / "metrics.csv"
    header, first, second = metrics.read_text().splitlines(keepends=True)
    extra_round = "2" + second[1:]  # a round the checkpoint does not hold
    changed = first.replace(",", ",9", 1)  # round 0 with another main accuracy
    for text in (header + first + second + extra_round, header + changed + second):
        metrics.write_text(text)
        before = folder_digest(run_copy)
        with pytest.raises(ConfigError, match=r"metrics.csv holds .* disagree .*nothing was changed; fix:"):
            run(tiny_config("rounds=3"), run_copy, resume=True, progress=False)
        assert folder_digest(run_copy) == before


def test_a_metrics_csv_one_round_behind_the_checkpoint_is_completed(run_copy, stopped_run):
    # A run stopped between writing its last checkpoint and its metrics: no final files yet.
    for name in ("manifest.json", "summary.json", "accuracy.png"):
        (run_copy / name).unlink()
    metrics = run_copy / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    run(tiny_config("rounds=2"), run_copy, resume=True, progress=False)
    assert read_metrics(run_copy) == read_metrics(stopped_run)


def test_resuming_a_finished_run_reads_it_back_without_writing(run_copy):
    before = folder_digest(run_copy)
    summary = run(tiny_config("rounds=2"), run_copy, resume=True, progress=False)
    assert folder_digest(run_copy) == before
    assert summary == json.loads((run_copy / "summary.json").read_text())


@pytest.mark.parametrize("damage", ["truncate metrics.csv", "edit summary.json", "drop manifest entry"])
def test_a_finished_run_whose_files_disagree_is_refused_unchanged(run_copy, damage):
    if damage == "truncate metrics.csv":
        metrics = run_copy / "metrics.csv"
        metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    elif damage == "edit summary.json":
        summary = json.loads((run_copy / "summary.json").read_text())
        summary["final_main_accuracy"] = 99.0
        (run_copy / "summary.json").write_text(json.dumps(summary))
    else:
        manifest = json.loads((run_copy / "manifest.json").read_text())
        del manifest["files"]["metrics.csv"]
        (run_copy / "manifest.json").write_text(json.dumps(manifest))
    before = folder_digest(run_copy)
    with pytest.raises(ConfigError, match="does not hold an intact finished run"):
        run(tiny_config("rounds=2"), run_copy, resume=True, progress=False)
    assert folder_digest(run_copy) == before


@pytest.mark.parametrize("damage", ["truncate metrics.csv", "edit summary.json"])
def test_a_finished_run_from_before_manifests_is_checked_against_its_own_files(run_copy, damage):
    (run_copy / "manifest.json").unlink()
    (run_copy / "checkpoint.pt").unlink()
    from sim.reporting import read_finished

    assert read_finished(run_copy, tiny_config("rounds=2"))["rounds"] == 2
    if damage == "truncate metrics.csv":
        metrics = run_copy / "metrics.csv"
        metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    else:
        summary = json.loads((run_copy / "summary.json").read_text())
        summary["mean_backdoor_accuracy"] = 1.5
        (run_copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="does not hold an intact finished run"):
        read_finished(run_copy, tiny_config("rounds=2"))


@pytest.mark.parametrize("setting", ["attack.boost=1e30", "model_poisoning.type=lie|model_poisoning.lie.z=1e30"])
def test_an_aggregate_that_breaks_the_model_is_rejected_and_recorded(tmp_path, capsys, setting):
    cfg = tiny_config("rounds=3", "server.aggregator=fedavg", *setting.split("|"))
    summary = run(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [row["aggregate_rejected"] for row in rows] == [1, 1, 1]
    assert all(torch.isfinite(torch.tensor(row["test_loss"])) for row in rows)
    assert summary["rounds_aggregate_rejected"] == 3
    assert "round 0: the aggregate gives a non-finite global model" in capsys.readouterr().err
    # Every round keeps the initial model, so every round scores the same.
    assert len({(row["main_accuracy"], row["test_loss"]) for row in rows}) == 1


def test_a_normal_aggregate_is_accepted(tmp_path):
    run(tiny_config("rounds=2", "server.aggregator=fedavg"), tmp_path / "run", progress=False)
    assert [row["aggregate_rejected"] for row in read_metrics(tmp_path / "run")] == [0, 0]


def test_machine_facts_are_recorded_and_checked_on_resume(run_copy, tmp_path):
    torch.set_num_threads(2)
    with pytest.raises(ConfigError, match=r"threads \(saved 1, now 2\).*fix: --threads 1, or pass --allow-machine-change"):
        run(tiny_config("rounds=3"), run_copy, resume=True, progress=False)
    assert len(read_metrics(run_copy)) == 2
    summary = run(tiny_config("rounds=3"), run_copy, resume=True, progress=False, allow_machine_change=True)
    torch.set_num_threads(1)
    # Each segment of rounds records the facts of the process that ran it; the summary's
    # top-level thread count is what they share, never the last process's alone.
    assert summary["threads"] == "mixed (see provenance)"
    assert [(item["rounds"], item["threads"]) for item in summary["provenance"]] == [([0, 2], 1), ([2, 3], 2)]
    assert set(summary["machine"]) == {"torch", "cpu", "gpu", "device"}
    assert summary["machine"]["device"] == "cpu" and summary["machine"]["gpu"] is None
    assert summary["machine"]["torch"] == str(torch.__version__)
    assert json.loads((run_copy / "summary.json").read_text())["threads"] == "mixed (see provenance)"


def test_provenance_is_recorded_when_observed(run_copy):
    import numpy
    import platform

    summary = json.loads((run_copy / "summary.json").read_text())
    (segment,) = summary["provenance"]
    assert segment["rounds"] == [0, 2] and segment["threads"] == 1 == summary["threads"]
    assert segment["python"] == platform.python_version() and segment["numpy"] == numpy.__version__
    assert segment["torch"] == str(torch.__version__)
    assert len(segment["commit"]) == 40 and isinstance(segment["dirty"], bool)
    for key in ("cpu", "cpu_family", "cpu_model", "cpu_stepping", "cpu_flags", "started"):
        assert segment[key], key
    assert "avx" in segment["cpu_flags"] or "neon" in segment["cpu_flags"] or "fp" in segment["cpu_flags"]


def test_rounds_from_a_checkpoint_without_segments_read_not_recorded(run_copy):
    from sim.state import save_checkpoint

    checkpoint = read_checkpoint(run_copy / "checkpoint.pt")
    checkpoint.pop("segments")
    (run_copy / "checkpoint.pt").write_bytes(encode_checkpoint(checkpoint))
    summary = run(tiny_config("rounds=3"), run_copy, resume=True, progress=False)
    assert summary["provenance"][0] == {"rounds": [0, 2], "facts": "not recorded"}
    assert summary["provenance"][1]["rounds"] == [2, 3]
    assert summary["threads"] == "not recorded"
