"""How to reproduce a result: the command line (or Python call), versions, threads and device.

Every ``summary.json``, a sweep's ``config.json`` and every ``index.html`` carry a ``provenance`` object
(:func:`provenance`), so a report says how it was made. The CLI records its exact command line
(:func:`command_line`, entered by the ``advkit`` group); a Python caller is recorded as the function it
called. The provenance is not part of a sweep's fingerprint: the same sweep run from another shell,
with another ``--json`` or thread count, resumes the same cells.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_command: ContextVar[str | None] = ContextVar("advkit_command", default=None)


@contextmanager
def command_line(args: list[str] | tuple[str, ...] | None) -> Iterator[None]:
    """Within this block, reports record this ``advkit`` command line (its arguments after the program name)."""
    token = _command.set(shlex.join(["advkit", *(sys.argv[1:] if args is None else [str(a) for a in args])]))
    try:
        yield
    finally:
        _command.reset(token)  # a Python call after a CLI run in the same process is recorded as such


def provenance(device: Any = None, call: str | None = None) -> dict:
    """``{"command", "python_call", "advkit", "torch", "python", "platform", "torch_threads", "device", "time"}``.

    ``command`` is the ``advkit`` command line when the CLI ran, else None and ``python_call`` names the function.
    """
    import torch

    from advkit import __version__

    command = _command.get()
    return {
        "command": command,
        "python_call": None if command else (call or "advkit Python API"),
        "advkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "device": None if device is None else str(device),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def with_provenance(summary: dict, device: Any = None, call: str | None = None) -> dict:
    """``summary`` with a ``provenance`` entry (kept if it has one), the device taken from the summary if it says."""
    if "provenance" in summary:
        return summary
    return {**summary, "provenance": provenance(device if device is not None else summary.get("device"), call)}


def write_summary(path: Path, summary: dict, device: Any = None, call: str | None = None) -> Path:
    """Write ``summary`` (with its provenance) as indented JSON to ``path``; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(with_provenance(summary, device, call), indent=2, default=str))
    return path


def provenance_html(record: dict | None) -> str:
    """An HTML table of a provenance record ("" when there is none, e.g. a report made before advkit kept one)."""
    import html

    if not record:
        return ""
    how = record.get("command") or record.get("python_call") or ""
    rows = {
        "command": how,
        "versions": f"advkit {record.get('advkit')}, torch {record.get('torch')}, Python {record.get('python')}",
        "machine": f"{record.get('platform')}, {record.get('torch_threads')} torch thread(s), device "
        f"{record.get('device') or 'cpu'}",
        "made": record.get("time", ""),
    }
    body = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(str(v))}</code></td></tr>"
        if k == "command"
        else f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<h2>Reproduce</h2>\n<table>{body}</table>"


__all__ = ["command_line", "provenance", "provenance_html", "with_provenance", "write_summary"]
