"""Rerun every command in reports/README.md, so the committed reports come from the code as it is.

    python scripts/regenerate_reports.py                  # all of them, one after the other (about 17 minutes)
    python scripts/regenerate_reports.py s2-bnn-eps0.1    # only the reports whose folder names are given

Each line of reports/README.md reads ``reports/NAME/ was written by: COMMAND``; the command runs from the repository
root with the environment it names (e.g. ``OMP_NUM_THREADS=1``), and its seconds are printed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^reports/(?P<name>[^/]+)/ was written by: (?P<command>.+)$")


def commands() -> dict[str, str]:
    found = {}
    for line in (ROOT / "reports" / "README.md").read_text().splitlines():
        match = LINE.match(line.strip())
        if match:
            found[match.group("name")] = match.group("command")
    return found


def run(command: str) -> float:
    words = shlex.split(command)
    env = dict(os.environ)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words[0] == "advkit":
        words = [str(Path(sys.executable).with_name("advkit")), *words[1:]]
    start = time.perf_counter()
    subprocess.run(words, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(names: list[str]) -> int:
    todo = commands()
    unknown = [n for n in names if n not in todo]
    if unknown:
        print(f"no such report: {', '.join(unknown)}; reports: {', '.join(todo)}")
        return 2
    failed = []
    for name, command in todo.items():
        if names and name not in names:
            continue
        print(f"{name}: {command}", flush=True)
        try:
            print(f"  {run(command):.1f} s", flush=True)
        except subprocess.CalledProcessError as error:
            print(f"  FAILED with exit code {error.returncode}", flush=True)
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
