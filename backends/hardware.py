"""What accelerators this machine offers to each engine: CUDA (through torch), Apple Metal, else CPU.

Each probe imports its engine only if it is installed, so the llama.cpp-only install never imports
torch and the transformers-only install never loads llama.cpp. Probes are cached: the answer cannot
change while the process runs, and importing torch costs a second or two.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """The accelerators found, per engine; ``cuda_devices`` holds one ``"name (N GiB)"`` per GPU."""

    cuda_devices: tuple[str, ...] = ()
    metal: bool = False  # Apple silicon, and the installed llama.cpp can offload to it
    llama_gpu_offload: bool = False  # the installed llama.cpp was built with a GPU backend
    cpu_count: int = 1

    @property
    def cuda(self) -> bool:
        return bool(self.cuda_devices)

    def describe(self) -> str:
        """One phrase for the reasons shown to the user."""
        if self.cuda:
            return f"CUDA GPU {self.cuda_devices[0]}" + (
                f" (+{len(self.cuda_devices) - 1} more)" if len(self.cuda_devices) > 1 else ""
            )
        if self.metal:
            return "Apple Metal GPU"
        return f"no GPU ({self.cpu_count} CPU cores)"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda_devices() -> tuple[str, ...]:
    if not _installed("torch"):
        return ()
    import torch

    if not torch.cuda.is_available():
        return ()
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(f"{props.name} ({props.total_memory / 2**30:.0f} GiB)")
    return tuple(devices)


def _llama_gpu_offload() -> bool:
    if not _installed("llama_cpp"):
        return False
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def _apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


@functools.cache
def detect() -> Hardware:
    """Probe once per process."""
    offload = _llama_gpu_offload()
    return Hardware(
        cuda_devices=_cuda_devices(),
        metal=_apple_silicon() and offload,
        llama_gpu_offload=offload,
        cpu_count=os.cpu_count() or 1,
    )
