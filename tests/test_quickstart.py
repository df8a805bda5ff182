"""The README's quick start "your own model on your own data", run as written: its files saved, its snippet run,
its commands run in a fresh folder (offline: the data are the digits advkit ships)."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

from advkit.files import sha256_file

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- quickstart: (?P<name>[^ ]+) -->\n```[a-z]*\n(?P<body>.*?)\n```", re.S)


def quickstart_blocks() -> dict[str, str]:
    return {m["name"]: m["body"] + "\n" for m in BLOCK.finditer(README.read_text(encoding="utf-8"))}


def test_the_quick_start_runs_as_written(tmp_path):
    blocks = quickstart_blocks()
    assert sorted(blocks) == ["commands", "make_files.py", "my_model.py"]
    for name in ("my_model.py", "make_files.py"):
        (tmp_path / name).write_text(blocks[name], encoding="utf-8")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)  # the snippet finds my_model.py in its own folder, as a newcomer's would
    subprocess.run(["python", "make_files.py"], cwd=tmp_path, env=env, check=True, timeout=600)
    assert (tmp_path / "digits.safetensors").is_file() and (tmp_path / "my_model.safetensors").is_file()

    run = subprocess.run(
        ["bash", "-e", "-c", blocks["commands"]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "advkit untargeted on my_model.py:make: 100 correctly classified test samples [digits.safetensors]" in out
    assert "threat model   linf(eps=0.1) & box(0, 1)" in out  # the bounds the data file declares
    sha = sha256_file(tmp_path / "my_model.safetensors")
    assert f"weights        my_model.safetensors (sha256 {sha})" in out
    with open(tmp_path / "my-sweep" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["eps"]) for r in rows] == [0.05, 0.1, 0.2]
    rates = [float(r["success_rate"]) for r in rows]
    assert rates == sorted(rates) and rates[-1] > rates[0]  # a trained model, attacked for real
    assert (tmp_path / "my-sweep" / "index.html").is_file()
    apgd_rate = float(out.strip().splitlines()[-1])
    assert 0.0 < apgd_rate <= 1.0
