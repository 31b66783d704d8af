"""Helpers the benchmark scripts share."""
from __future__ import annotations

import os
import platform


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
