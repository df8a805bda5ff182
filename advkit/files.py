"""File helpers every writer and loader shares: a file's sha256, and writes that readers see whole or not at all.

This module imports nothing from advkit, so the zoo and any loader can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part (a temp file
    ``.NAME.PID.tmp`` next to it, then ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented, key-sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Tensors as a safetensors file (on the CPU, contiguous; arguments as ``safetensors.torch.save_file``), created like
    every other output file: the user's umask decides its mode (``save_file`` would make it 0600)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().clone() for k, v in tensors.items()}, metadata=metadata)  # own storage each
    path = Path(path)
    path.write_bytes(data)
    return path


__all__ = ["atomic_write_bytes", "atomic_write_json", "sha256_file", "write_tensors"]
