"""Every benchmark script imports and parses its options against the library as it is (a renamed or removed
advkit function breaks the script before anyone measures anything)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("bench_*.py"))

#: Runs each script given as an argument as ``__main__`` with ``--help`` in this one interpreter (torch is imported
#: once, not once per script) and prints, per script, its exit code, what it printed and any traceback, as JSON.
_HELP_ALL = r"""
import contextlib, io, json, runpy, sys, traceback
sys.path.insert(0, sys.argv[1])
results = {}
for script in sys.argv[2:]:
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [script, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            code, _ = 1, traceback.print_exc()
    results[script] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def help_outputs() -> dict[str, dict]:
    folder = BENCHMARKS[0].parent
    done = subprocess.run(
        [sys.executable, "-c", _HELP_ALL, str(folder), *map(str, BENCHMARKS)],
        capture_output=True, text=True, timeout=600, cwd=folder.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_there_are_benchmarks():
    assert len(BENCHMARKS) >= 5


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_script_imports_and_shows_its_help(script, help_outputs):
    done = help_outputs[str(script)]
    assert done["code"] == 0, done["stderr"][-2000:]
    assert "usage:" in done["stdout"] and "Traceback" not in done["stderr"]
