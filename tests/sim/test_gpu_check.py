"""scripts/gpu_check.sh, the one command for a GPU machine, run small on the CPU: every step
(import check, tests, step latency, simulator throughput, aggregators, demo) must pass and
write its results with the device named."""
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import device_name
from sim.server.registry import AGGREGATORS

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_every_step_small_on_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    finished = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick", "--no-build", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    cpu = device_name("cpu")
    summary = (tmp_path / "gpu_check_cpu.md").read_text()
    assert cpu in summary
    steps = [line.split("|")[1:3] for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    steps = {name.strip(): status.strip() for name, status in steps if name.strip() != "step"}
    assert set(steps) == {"extension_check", "tests", "step_latency", "sim_throughput", "aggregators", "demo"}
    assert set(steps.values()) == {"ok"}

    assert json.loads((tmp_path / "step_latency_cpu.json").read_text())["device"].startswith(cpu)
    throughput = json.loads((tmp_path / "sim_throughput_cpu.json").read_text())
    assert throughput["device"] == cpu
    assert {row["engine"] for row in throughput["rows"] if "error" not in row} >= {"sequential", "batched"}
    aggregation = json.loads((tmp_path / "aggregators_cpu_quick.json").read_text())
    assert aggregation["device"].startswith(cpu)
    assert {row["rule"] for row in aggregation["rows"]} == set(AGGREGATORS)
    demo = (tmp_path / "demo_cpu.md").read_text()
    assert cpu in demo and "Wall time of the whole command" in demo
