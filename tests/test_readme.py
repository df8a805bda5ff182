"""The README's numbers come from the code as it is: scripts/check_readme.py recomputes the cheap blocks (the main
job's output and the zoo's clean accuracies) and this test fails when they drift. The S6 PGD table takes longer; the
script checks it by hand (`python scripts/check_readme.py --only zoo-s6`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_readme.py"


@pytest.fixture(scope="module")
def check_readme():
    spec = importlib.util.spec_from_file_location("check_readme", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("block", ["main-job", "zoo-accuracy"])
def test_readme_block_matches_the_code(check_readme, block):
    problems = check_readme.check(only=[block])
    assert not problems, (
        "README drifted; run `python scripts/check_readme.py --write` after checking why:\n" + "\n".join(problems)
    )


def test_the_check_notices_drift(check_readme, tmp_path):
    readme = tmp_path / "zoo.md"
    text = (check_readme.README.parent / "docs" / "zoo.md").read_text()
    readme.write_text(text.replace("**98.2%**", "**99.9%**"))
    assert check_readme.check(readme, only=["zoo-accuracy"])  # a changed number is caught
    check_readme.check(readme, only=["zoo-accuracy"], write=True)
    assert not check_readme.check(readme, only=["zoo-accuracy"]) and "**98.2%**" in readme.read_text()
