"""Studies: the work behind each command (attack a data set, the ImageNet photos, optimized noise, universal
perturbations, class visualizations, look-alikes, transfer matrices, sweeps), as click-free Python that takes
adapters and data sets and returns a result with ``.summary()`` and ``.write(out)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StudyResult:
    """A study's outcome: its JSON-able summary, what it computed, and how it writes its report folder."""

    command: str
    summary_: dict
    writer: Callable[[Path], list[Path]] = field(repr=False)
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        return dict(self.summary_)

    def write(self, out: str | Path, overwrite: bool = False) -> list[Path]:
        """The report files in ``out``, claimed first (never over files advkit did not write, unless ``overwrite``)."""
        from advkit.outputs import claim, record

        folder = claim(out, self.command, overwrite=overwrite)
        written = self.writer(folder)
        record(folder, written)
        self.summary_["out"] = [str(p) for p in written]
        return written


__all__ = ["StudyResult"]
