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


def test_the_main_job_check_allows_a_sample_of_machine_drift_and_nothing_more(check_readme):
    block = (
        "  success        20/100 = 20.0%  (wrong class with p >= 0.90, re-checked by a fresh forward pass)\n"
        "  passes         8716 forward, 8636 backward, at most 100 per sample; 8.25 s; seed 0\n"
    )
    other_machine = block.replace("20/100 = 20.0%", "21/100 = 21.0%").replace("8716", "8643").replace("8.25", "6.05")
    assert check_readme._close(block, other_machine)
    assert not check_readme._close(block, block.replace("20/100 = 20.0%", "30/100 = 30.0%"))
    assert not check_readme._close(block, block.replace("8716 forward", "9716 forward"))
    assert not check_readme._close(block, block.replace("re-checked", "checked"))
