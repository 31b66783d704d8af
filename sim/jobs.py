"""Independent runs executed side by side: local processes, or tasks on a Ray cluster.

A `Trial` is a full configuration (plain nested dicts, as `config.yaml` holds them) and the folder
its run writes to. Every trial runs as its own process of the command line,

    python -m sim run --config <folder>/config-input.yaml --out <folder> --threads 1 --no-progress [--resume]

so trials share nothing with each other or with the process that launched them, and a trial is
the same run whichever backend executed it. Its output goes to `<folder>/log.txt`.

* `LocalBackend(jobs)`: at most `jobs` processes at once on this machine, one torch thread each.
* `RayBackend(address)`: each trial is a Ray task of one CPU (or a share of a GPU) on a running
  cluster (`address="auto"`) or on a local instance started here (`address=None`). Workers write
  to the trial's folder; the small result files are also returned to the driver, which writes
  any that its own file system lacks, so a cluster without a shared folder still leaves the
  results in the output folder (only a stopped trial's checkpoint stays on its worker).

A stopped launcher stops its local trials (on Linux they get SIGTERM when their parent dies);
`--resume` continues each from its last finished round.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from sim.errors import ConfigError

TRIAL_CONFIG_FILE = "config-input.yaml"
LOG_FILE = "log.txt"
# What a finished trial leaves that the driver needs; the checkpoint stays where the run ran.
RESULT_FILES = ("config.yaml", "metrics.csv", "summary.json", "accuracy.png", "attack_effect.png", "manifest.json",
                LOG_FILE)
# Files of a started run, removed before a trial starts afresh (a run refuses a used folder).
RUN_FILES = ("manifest.json", "checkpoint.pt", "metrics.csv", "summary.json", "accuracy.png", "attack_effect.png",
             "config.yaml")
# One thread per trial: the parallelism is across trials.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass
class Trial:
    name: str
    settings: dict  # a full configuration as nested dicts (sim.config.to_dict)
    out_dir: Path
    resume: bool = False  # continue from the folder's checkpoint


@dataclass
class TrialResult:
    name: str
    returncode: int
    log_tail: str = ""
    elapsed_s: float = 0.0  # the trial's process, start to end
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def trial_command(out_dir: str | Path, resume: bool, python: str | None = None) -> list[str]:
    out_dir = Path(out_dir)
    command = [python or sys.executable, "-m", "sim", "run", "--config", str(out_dir / TRIAL_CONFIG_FILE),
               "--out", str(out_dir), "--threads", "1", "--no-progress"]
    return command + (["--resume"] if resume else [])


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def _die_with_parent() -> None:
    # Linux: the trial gets SIGTERM when the launcher dies, even by SIGKILL, so a killed sweep
    # leaves no orphan writing into its folders.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def execute_trial(name: str, settings: dict, out_dir: str, resume: bool, gather: bool = False) -> TrialResult:
    """Run one trial to its end in this process's machine; the unit both backends execute."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        for stale in RUN_FILES:
            (folder / stale).unlink(missing_ok=True)
    _write(folder / TRIAL_CONFIG_FILE, yaml.safe_dump(settings, sort_keys=False).encode())
    env = {**os.environ, **THREAD_ENV}
    started = time.perf_counter()
    with open(folder / LOG_FILE, "ab") as log:
        process = subprocess.run(
            trial_command(folder, resume), stdout=log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    elapsed = time.perf_counter() - started
    log_text = (folder / LOG_FILE).read_bytes()
    tail = log_text.decode(errors="replace").strip().splitlines()[-1:] or [""]
    files = {}
    if gather:
        files = {name: (folder / name).read_bytes() for name in RESULT_FILES if (folder / name).is_file()}
    return TrialResult(name, process.returncode, tail[0], elapsed, files)


class LocalBackend:
    """Up to `jobs` trials at once as processes on this machine."""

    def __init__(self, jobs: int = 1):
        if jobs < 1:
            raise ConfigError(f"--jobs {jobs} must be at least 1; fix: --jobs 1")
        self.jobs = jobs

    def describe(self) -> str:
        return f"{self.jobs} local process{'es' if self.jobs > 1 else ''}, one thread each"

    def run(self, trials: list[Trial], on_done: Callable[[Trial, TrialResult], None]) -> list[TrialResult]:
        results = []
        by_future = {}
        pending = iter(trials)
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            def submit_next() -> None:
                trial = next(pending, None)
                if trial is not None:
                    future = pool.submit(execute_trial, trial.name, trial.settings, str(trial.out_dir), trial.resume)
                    by_future[future] = trial

            for _ in range(self.jobs):
                submit_next()
            while by_future:
                done, _ = wait(list(by_future), return_when=FIRST_COMPLETED)
                for future in done:
                    trial = by_future.pop(future)
                    result = future.result()
                    results.append(result)
                    on_done(trial, result)
                    submit_next()
        return results


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs the ray package, which is not installed; fix: pip install -e .[ray] "
            "(or pip install 'ray[default]'), or drop --ray to run local processes"
        ) from None
    return ray


class RayBackend:
    """Each trial a Ray task: one CPU, plus `gpus_per_trial` of a GPU when above 0.

    `address`: "auto" (the cluster this machine belongs to), "ray://host:port" or "host:port",
    or None to start a local instance of `num_cpus` CPUs (what tests use).
    """

    def __init__(self, address: str | None = "auto", gpus_per_trial: float = 0.0, num_cpus: int | None = None):
        if gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial} must be >= 0; fix: --gpus-per-trial 0.5")
        self.ray = _ray()
        self.address = address
        self.gpus_per_trial = gpus_per_trial
        self.num_cpus = num_cpus

    def describe(self) -> str:
        where = "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address}"
        share = f", {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ""
        return f"Ray tasks on {where} (1 CPU{share} each)"

    def _connect(self) -> bool:
        ray = self.ray
        if ray.is_initialized():
            return False
        # The driver's import path travels with the tasks, so workers on this machine find `sim`.
        env_vars = {key: value for key, value in os.environ.items() if key == "PYTHONPATH"}
        runtime_env = {"env_vars": env_vars} if env_vars else None
        if self.address is None:
            ray.init(num_cpus=self.num_cpus, runtime_env=runtime_env, include_dashboard=False,
                     log_to_driver=False)
        else:
            ray.init(address=self.address, runtime_env=runtime_env, log_to_driver=False)
        return True

    def run(self, trials: list[Trial], on_done: Callable[[Trial, TrialResult], None]) -> list[TrialResult]:
        ray = self.ray
        started_here = self._connect()
        try:
            options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
            if self.gpus_per_trial:
                options["num_gpus"] = self.gpus_per_trial
            task = ray.remote(**options)(execute_trial)
            by_ref = {
                task.remote(trial.name, trial.settings, str(trial.out_dir), trial.resume, True): trial
                for trial in trials
            }
            results = []
            while by_ref:
                done, _ = ray.wait(list(by_ref), num_returns=1)
                for ref in done:
                    trial = by_ref.pop(ref)
                    result = ray.get(ref)
                    _gather(trial.out_dir, result.files)
                    results.append(result)
                    on_done(trial, result)
            return results
        finally:
            if started_here:
                ray.shutdown()


def _gather(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write the returned result files the driver's folder lacks or holds in another version."""
    for name, data in files.items():
        path = Path(out_dir) / name
        if not (path.is_file() and path.read_bytes() == data):
            _write(path, data)


def make_backend(jobs: int = 1, ray: str | None = None, gpus_per_trial: float = 0.0):
    """`LocalBackend(jobs)`, or `RayBackend(ray)` when a Ray address is given."""
    if ray is None:
        if gpus_per_trial:
            raise ConfigError("--gpus-per-trial applies to Ray tasks only; fix: add --ray auto, or drop it")
        return LocalBackend(jobs)
    if jobs != 1:
        raise ConfigError(f"--jobs {jobs} sets local processes; with --ray the cluster runs as many trials as it "
                          "has CPUs (or GPU shares); fix: drop --jobs")
    return RayBackend(ray, gpus_per_trial)


def run_trials(trials: Iterable[Trial], backend, on_done: Callable[[Trial, TrialResult], None] | None = None):
    """Execute every trial with `backend`; `on_done(trial, result)` is called as each ends."""
    return backend.run(list(trials), on_done or (lambda trial, result: None))
