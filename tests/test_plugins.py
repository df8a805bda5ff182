"""Plugin discovery through entry points, the autoload switches and the example package."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from advkit import plugins, registry
from advkit.cli import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "advkit-random-sign"


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    """Install the example package the way pip would expose it: its code and a dist-info with the entry point."""
    dist = tmp_path / "advkit_random_sign-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: advkit-random-sign\nVersion: 0.1.0\n")
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    entries = "".join(f"{name} = {target}\n" for name, target in project["entry-points"]["advkit"].items())
    (dist / "entry_points.txt").write_text("[advkit]\n" + entries)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    sys.modules.pop("advkit_random_sign", None)
    yield
    sys.modules.pop("advkit_random_sign", None)
    monkeypatch.undo()
    plugins.reload_plugins()


def test_example_plugin_is_discovered_and_runs_through_the_cli(installed_example, monkeypatch):
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.ALLOWED_PLUGINS_ENV, raising=False)
    plugins.reload_plugins()
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["plugins", "--json"]).output)
    example = next(p for p in listed if p["name"] == "random_sign")
    assert example == {"name": "random_sign", "distribution": "advkit-random-sign", "version": "0.1.0", "builtin": False,
                       "hooks": ["register_attacks"]}
    assert "random_sign" in runner.invoke(cli, ["attacks"]).output
    result = runner.invoke(cli, ["attack", "--model", "cnn", "--attack", "random_sign", "--eps", "0.5", "-n", "10",
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["plugin"] == {"name": "random_sign", "distribution": "advkit-random-sign", "version": "0.1.0"}
    assert summary["backward_passes"] == 0 and summary["max_linf"] <= 0.5 + 1e-6


@pytest.mark.parametrize("env", [{"ADVKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}, {"ADVKIT_PLUGINS": "something_else"},
                                 {"ADVKIT_PLUGINS": ""}])
def test_blocked_plugin_is_never_imported(installed_example, monkeypatch, env):
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.ALLOWED_PLUGINS_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugins.reload_plugins()
    assert "random_sign" not in registry.attacks()
    assert "advkit_random_sign" not in sys.modules
    assert {"untargeted", "pgd"} <= set(registry.attacks())  # built-ins always load


def test_allow_list_admits_the_named_plugin(installed_example, monkeypatch):
    monkeypatch.setenv(plugins.ALLOWED_PLUGINS_ENV, "random_sign")
    plugins.reload_plugins()
    assert "random_sign" in registry.attacks()


def test_register_plugin_object_and_duplicate_names():
    import advkit
    from advkit.attack import Attack

    class Dup:
        @advkit.hookimpl
        def register_attacks(self, register):
            register(type("Clash", (Attack,), {"name": "pgd", "__doc__": "clash"}))

    plugins.register_plugin(Dup(), name="dup")
    try:
        with pytest.raises(ValueError, match="registered twice"):
            registry.attacks()
        result = CliRunner().invoke(cli, ["attacks"])  # the CLI names the clash instead of a traceback
        assert result.exit_code == 1 and not isinstance(result.exception, ValueError)
        assert "attack 'pgd' is registered twice" in result.output and "ADVKIT_DISABLE_PLUGIN_AUTOLOAD" in result.output
    finally:
        plugins.unregister_plugin("dup")
    assert "pgd" in registry.attacks()


def test_builtins_come_from_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="advkit") if ep.dist and ep.dist.name == "advkit"}
    assert {"untargeted", "targeted", "binary", "fgsm", "pgd", "mnist_models", "constraints"} <= names
    for name in ["untargeted", "targeted", "binary", "fgsm", "pgd"]:
        assert registry.get_attack(name).plugin.builtin


def test_broken_plugin_names_itself(tmp_path, monkeypatch):
    dist = tmp_path / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[advkit]\nbroken = advkit_no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(plugins.PluginLoadError, match="'broken'.*ADVKIT_DISABLE_PLUGIN_AUTOLOAD"):
            plugins.reload_plugins()
        monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
        plugins.reload_plugins()  # switching autoload off gets the user going again
    finally:
        monkeypatch.undo()
        plugins.reload_plugins()


SENTINEL_PLUGIN = '''
import os
import pathlib

pathlib.Path(os.environ["ADVKIT_TEST_SENTINEL"]).write_text("imported")  # runs on import, before any hook


def register_attacks(register):
    pass
'''


@pytest.mark.parametrize("env, imported", [({}, True), ({"ADVKIT_PLUGINS": "sentinel"}, True),
                                           ({"ADVKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}, False),
                                           ({"ADVKIT_PLUGINS": "random_sign,other"}, False)])
def test_blocked_plugin_code_never_runs_in_a_fresh_interpreter(tmp_path, env, imported):
    """A plugin whose import writes a sentinel file: blocked, the file never appears (checked in a new process)."""
    import os
    import subprocess

    (tmp_path / "advkit_sentinel_plugin.py").write_text(SENTINEL_PLUGIN)
    dist = tmp_path / "advkit_sentinel_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: advkit-sentinel-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[advkit]\nsentinel = advkit_sentinel_plugin\n")
    sentinel = tmp_path / "SENTINEL"
    child_env = {k: v for k, v in os.environ.items() if k not in (plugins.DISABLE_AUTOLOAD_ENV, plugins.ALLOWED_PLUGINS_ENV)}
    child_env.update(env, ADVKIT_TEST_SENTINEL=str(sentinel),
                     PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    code = "from advkit import registry; names = registry.attacks(); assert 'pgd' in names"
    subprocess.run([sys.executable, "-c", code], env=child_env, check=True, timeout=120)
    assert sentinel.exists() == imported
