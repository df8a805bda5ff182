"""Every ``advkit ...`` command in the README, the pages under docs/ and reports/README.md parses: its command exists
and takes every option as written (names, choices, types such as 2/255), so a renamed option cannot leave a page
behind. The commands whose numbers the pages show are run for real elsewhere (scripts/check_readme.py,
tests/test_readme.py, tests/test_quickstart.py, scripts/regenerate_reports.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from advkit.cli import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block of a Markdown page."""
    blocks, language, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(body)))
                language = None
        elif language is not None:
            body.append(line)
    return blocks


def documented_commands() -> list[tuple[str, str]]:
    """(where, command line) for each ``advkit`` command in a shell block (``$ advkit`` in an output block), and in
    reports/README.md."""
    found = []
    for page in PAGES:
        for language, body in code_blocks(page.read_text(encoding="utf-8")):
            prompt = "advkit " if language in ("bash", "sh", "") else "$ advkit "
            for line in body.replace("\\\n", " ").splitlines():
                if line.strip().startswith(prompt):
                    found.append((page.name, line.strip().removeprefix("$ ")))
    for line in (ROOT / "reports" / "README.md").read_text(encoding="utf-8").splitlines():
        if " was written by: " in line:
            command = line.split(" was written by: ", 1)[1]
            found.append(("reports/README.md", re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", command)))
    return found


COMMANDS = documented_commands()


def test_the_pages_are_read():
    pages = {where for where, _ in COMMANDS}
    assert {"README.md", "attacks.md", "sweeps-and-reports.md", "models-and-data.md", "reports/README.md"} <= pages
    assert len(COMMANDS) > 30


@pytest.mark.parametrize("where, line", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_every_documented_command_parses(where, line, monkeypatch):
    words = shlex.split(line, comments=True)
    assert words[0] == "advkit"
    name = words[1]
    assert name in cli.commands, f"{where}: `{line}` names no command {name!r}"
    parsed = {}
    monkeypatch.setattr(cli.commands[name], "callback", lambda **options: parsed.update(options))
    monkeypatch.chdir(ROOT)  # the pages' paths are relative to the repository
    result = CliRunner().invoke(cli, words[1:])
    assert result.exit_code == 0 and parsed, f"{where}: `{line}`:\n{result.output}"


def test_a_stale_option_is_caught(monkeypatch):
    """The check above fails on what it is for: an option that no longer exists."""
    monkeypatch.setattr(cli.commands["transfer"], "callback", lambda **options: None)
    result = CliRunner().invoke(cli, ["transfer", "--source", "bnn", "--target-class", "8", "--eps", "0.1"])
    assert result.exit_code == 2 and "No such option '--target-class'" in result.output


def test_the_plugin_page_shows_the_example_plugin_as_it_is():
    """docs/plugins.md prints the example's module verbatim, so the code a newcomer copies is the code that passes
    advkit.testing (not an older draft drawing noise batch-wise)."""
    page = (ROOT / "docs" / "plugins.md").read_text()
    code = (ROOT / "examples" / "advkit-random-sign" / "advkit_random_sign" / "__init__.py").read_text()
    assert f"```python\n{code}```" in page
