"""No output folder is clobbered: every command claims its --out folder first (advkit.outputs) and refuses one that
holds files it did not write there, or a previous run's, unless --overwrite."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from advkit.cli import cli
from advkit.errors import OutputFolderError
from advkit.outputs import MANIFEST_NAME, claim, read_manifest, record

ATTACK = ["attack", "--model", "cnn", "--eps", "0.2", "-n", "2", "--attack", "fgsm"]
SWEEP = ["sweep", "--model", "cnn", "--attack", "fgsm", "--eps", "0.1", "-n", "4", "--no-checks"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_claim_and_record_track_what_advkit_wrote(tmp_path):
    out = tmp_path / "run"
    claim(out, "attack")
    (out / "summary.json").write_text("{}")
    record(out, [out / "summary.json"], folders=("cells",))
    manifest = read_manifest(out)
    assert manifest["command"] == "attack" and set(manifest["files"]) == {"summary.json", "cells"}
    with pytest.raises(OutputFolderError, match="holds the files of a previous `advkit attack` run \\(summary.json\\)"):
        claim(out, "attack")
    (out / "summary.json").write_text('{"edited": true}')  # changed since advkit wrote it: the user's now
    with pytest.raises(OutputFolderError, match="holds files advkit did not write there \\(summary.json\\)"):
        claim(out, "attack")


@pytest.mark.parametrize("command", [ATTACK, SWEEP])
def test_a_folder_with_the_users_own_files_is_refused_and_kept(tmp_path, command):
    """Today's bug: a folder holding the user's own index.html and results.csv was overwritten without a word."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("<p>my notes</p>")
    (out / "results.csv").write_text("mine\n")
    result = invoke(*command, "--out", out)
    assert result.exit_code == 2, result.output
    assert "holds files advkit did not write there (index.html, results.csv)" in result.output
    assert "--overwrite" in result.output
    assert (out / "index.html").read_text() == "<p>my notes</p>" and (out / "results.csv").read_text() == "mine\n"
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "results.csv"]  # nothing written, nothing lost


def test_attack_into_a_previous_runs_folder_says_so_and_overwrite_replaces_it(tmp_path):
    out = tmp_path / "run"
    first = invoke(*ATTACK, "--out", out, "--survival")
    assert first.exit_code == 0, first.output
    assert (out / "survival.csv").exists()
    again = invoke(*ATTACK, "--out", out)
    assert again.exit_code == 2 and "holds the files of a previous `advkit attack` run" in again.output
    (out / "notes.txt").write_text("keep me")
    replaced = invoke(*ATTACK, "--out", out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert not (out / "survival.csv").exists()  # the previous run's files went: none is mistaken for this run's
    assert (out / "notes.txt").read_text() == "keep me"  # the user's file stays
    written = set(read_manifest(out)["files"])
    assert written == {"examples.safetensors", "examples.png", "summary.json"}
    assert json.loads((out / "summary.json").read_text())["attack"] == "fgsm"


def test_a_sweep_resumes_its_own_folder_and_report_rebuilds_it(tmp_path):
    out = tmp_path / "sweep"
    first = invoke(*SWEEP, "--out", out)
    assert first.exit_code == 0, first.output
    assert read_manifest(out)["files"]["cells"] == "folder"
    again = invoke(*SWEEP, "--out", out)  # a resume, not a clobber
    assert again.exit_code == 0, again.output
    rebuilt = invoke("report", out, "--json")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert any(p.endswith("index.html") for p in json.loads(rebuilt.output)["out"])
    (out / "index.html").write_text("<p>edited by hand</p>")
    refused = invoke("report", out)
    assert refused.exit_code == 2 and "holds files advkit did not write there (index.html)" in refused.output
    assert (out / "index.html").read_text() == "<p>edited by hand</p>"
    (out / "notes.txt").write_text("mine")
    forced = invoke("report", out, "--overwrite")  # rebuilds from the sweep's files: it removes none of them
    assert forced.exit_code == 0, forced.output
    assert (out / "results.csv").exists() and (out / "cells").is_dir() and (out / "notes.txt").read_text() == "mine"
    assert "edited by hand" not in (out / "index.html").read_text()
    (out / "notes.txt").unlink()
    (out / "index.html").write_text("<p>edited by hand</p>")
    attack_there = invoke(*ATTACK, "--out", out, "--overwrite")  # --overwrite: the sweep's own files go, the edit stays
    assert attack_there.exit_code == 0, attack_there.output
    assert not (out / "cells").exists() and not (out / "results.csv").exists()
    assert (out / "index.html").read_text() == "<p>edited by hand</p>"


def test_an_unreadable_manifest_is_refused(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("[1, 2")
    with pytest.raises(OutputFolderError, match="is not a readable advkit manifest"):
        claim(tmp_path, "attack")
    claim(tmp_path, "attack", overwrite=True)  # --overwrite: every entry counts as the user's, kept
    assert read_manifest(tmp_path)["command"] == "attack"


def test_overwrite_replaces_a_sweep_folder_advkit_cannot_vouch_for(tmp_path):
    """A sweep folder made before advkit kept a manifest (or by hand): refused as it is, and --overwrite replaces
    its config.json and cells/ (the sweep's own store) instead of comparing against them."""
    out = tmp_path / "old"
    (out / "cells").mkdir(parents=True)
    (out / "cells" / "cnn__fgsm__0.1.json").write_text("{}")
    (out / "config.json").write_text('{"spec": {"eps": [0.5]}}')
    (out / "notes.txt").write_text("mine")
    refused = invoke(*SWEEP, "--out", out)
    assert refused.exit_code == 2 and "holds files advkit did not write there" in refused.output
    replaced = invoke(*SWEEP, "--out", out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert not (out / "cells" / "cnn__fgsm__0.1.json").exists()
    assert json.loads((out / "config.json").read_text())["spec"]["eps"] == [0.1]
    assert (out / "notes.txt").read_text() == "mine"
