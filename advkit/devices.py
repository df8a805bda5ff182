"""Devices: telling an out-of-memory error from others, and giving memory back after one."""

from __future__ import annotations

import torch


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA (or other device) out-of-memory error: ``torch.cuda.OutOfMemoryError`` or a RuntimeError saying so."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_device_memory(device: torch.device) -> None:
    """Return cached blocks to the device after an out-of-memory error (a no-op on the CPU)."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["free_device_memory", "is_out_of_memory"]
