"""Settings and markers the simulator tests share."""

from pathlib import Path

import pytest

import sim.data as data_module


def tiny_synthetic(clients: int = 8, malicious: int = 3, per_round: int = 5, fixed_malicious: int = 2,
                   train_size: int = 300) -> list[str]:
    """`--set` overrides for a seconds-long run: synthetic data, the MLP, a fixed number of
    malicious clients among the selected ones every round, two local steps."""
    return [
        "data.dataset=synthetic",
        f"data.synthetic_train_size={train_size}",
        "data.synthetic_test_size=100",
        "model=mlp",
        f"clients.num_clients={clients}",
        f"clients.num_malicious={malicious}",
        f"clients.clients_per_round={per_round}",
        "selection.schedule=fixed",
        f"selection.fixed_malicious={fixed_malicious}",
        "training.local_steps=2",
        "eval.batch_size=50",
    ]


def attack_section(**settings):
    """An `attack` config section as the engines read it, from flat keywords: the backdoor's own
    settings (`blend`, `blend_weight`) go to its subsection `attack.backdoor`."""
    from types import SimpleNamespace

    own = {key: settings.pop(key) for key in ("blend", "blend_weight") if key in settings}
    base = dict(type="backdoor", target_label=8, boost=1.0, trigger_values="data_range", follow_client_defense=False)
    base.update(settings)
    backdoor = {"blend": "mgda", "blend_weight": 0.5, **own}
    return SimpleNamespace(**base, backdoor=SimpleNamespace(**backdoor), dba=SimpleNamespace(**backdoor, pieces=3),
                           neurotoxin=SimpleNamespace(**backdoor, mask_share=0.1))


def fashion_mnist_present() -> bool:
    folder = Path(data_module.FASHION_MNIST_DEFAULT_DIR)
    return all(data_module._find_idx_file(folder, stem) is not None for stem in data_module.IDX_FILE_STEMS.values())


requires_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_present(),
    reason="FashionMNIST is not installed (apt-get install -y dataset-fashion-mnist)",
)


def metrics_without_timing(out_dir: Path) -> list[list[str]]:
    """The cells of a run's metrics.csv without the wall-time columns (which no two runs share)."""
    import csv

    from sim.io import METRICS_FILE
    from sim.records import TIMING_COLUMNS

    with open(Path(out_dir) / METRICS_FILE, newline="") as stream:
        rows = list(csv.reader(stream))
    keep = [i for i, column in enumerate(rows[0]) if column not in TIMING_COLUMNS]
    return [[row[i] for i in keep] for row in rows]


def run_on_two_gloo_ranks(config_file: Path, out_dir: Path):
    """`leadfl-sim run --config config_file` under torchrun on two CPU ranks (gloo, sequential
    engine, one thread each); the finished process."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    environment = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    environment["PYTHONPATH"] = os.pathsep.join([str(repo), environment.get("PYTHONPATH", "")])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "sim", "run", "--config", str(config_file), "--out", str(out_dir),
        "--engine", "sequential", "--no-progress", "--threads", "1",
    ]
    return subprocess.run(command, cwd=repo, env=environment, capture_output=True, text=True, timeout=240)
