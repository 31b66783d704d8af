"""Helpers the benchmark scripts share."""
from __future__ import annotations

import os
import platform
import time

MATMUL_SIZE = 512


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model and its core count, for result headers."""
    if device == "cuda":
        import torch  # imported here: callers may set torch up (threads) before importing it

        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def matmul_rate(repeats: int = 30) -> float:
    """FLOP/s of a 512x512 float32 matrix product on one thread, CPU time (best of `repeats` x 10),
    the rate the benchmarks set arithmetic floors against."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(10):
            a @ b
        best = min(best, (time.process_time() - started) / 10)
    return 2 * MATMUL_SIZE**3 / best
