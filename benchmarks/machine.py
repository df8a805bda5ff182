"""What every benchmark prints next to its figures: torch threads, the machine's load, versions.

Timings on a shared 2-core machine depend on both: torch's default (one thread per core) ran the suite 9x and the
PGD benchmark 1.7x slower while another job used the cores. Each benchmark takes ``--threads`` (default 2, or
$ADVKIT_THREADS) and prints :func:`machine_line` first.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch


def add_threads_argument(parser: argparse.ArgumentParser, default: int = 2) -> None:
    """``--threads N`` (default ``$ADVKIT_THREADS``, else ``default``)."""
    env = os.environ.get("ADVKIT_THREADS")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(env) if env else default,
        help=f"torch threads (default $ADVKIT_THREADS, else {default})",
    )


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def machine_line(threads: int | None = None) -> str:
    """Set torch's threads (if given) and describe the machine: threads, load, CPU, versions."""
    if threads is not None:
        torch.set_num_threads(threads)
    return (
        f"machine: {platform.machine()} {platform.processor() or ''}".rstrip() + f", {load_line()}, torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}, Python {platform.python_version()}"
    )
