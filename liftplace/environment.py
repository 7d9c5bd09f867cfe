"""Where a run computed: the processor, the thread count and the library versions.

Floating-point results differ between processors (an Intel Xeon and an AMD EPYC give the same seed
different FIDs after thousands of steps, docs/results.md), so a run's record says which one it ran
on. `cpu_model` needs nothing; `run_environment` imports torch and the libraries it names.
"""

from __future__ import annotations

import platform
from typing import Any

__all__ = ["cpu_model", "run_environment"]


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The processor's model name as Linux reports it ("AMD EPYC ...", "Intel(R) Xeon(R) ..."); None elsewhere."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return None


def run_environment(device: Any = "cpu", threads: int | None = None) -> dict[str, str]:
    """What a run's numbers depend on besides its seed and options, as strings: python, torch, diffusers,
    torch_pruning, machine (x86_64, arm64), cpu (model name), threads (torch's intra-op threads, or
    `threads`), device, and gpu (its name) when `device` is a CUDA device."""
    import diffusers
    import torch
    import torch_pruning

    env = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "torch_pruning": torch_pruning.__version__, "machine": platform.machine(),
           "cpu": cpu_model() or platform.processor() or platform.machine(),
           "threads": str(threads if threads is not None else torch.get_num_threads()), "device": str(device)}
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
