"""Plugin discovery through entry points, the autoload switches and the example package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tomllib
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
    assert example == {
        "name": "random_sign",
        "distribution": "advkit-random-sign",
        "version": "0.1.0",
        "builtin": False,
        "hooks": ["register_attacks"],
        "conflicts": [],
    }
    assert "random_sign" in runner.invoke(cli, ["attacks"]).output
    result = runner.invoke(
        cli, ["attack", "--model", "cnn", "--attack", "random_sign", "--eps", "0.5", "-n", "10", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["plugin"] == {"name": "random_sign", "distribution": "advkit-random-sign", "version": "0.1.0"}
    assert summary["backward_passes"] == 0 and summary["max_linf"] <= 0.5 + 1e-6


@pytest.mark.parametrize(
    "env", [{"ADVKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}, {"ADVKIT_PLUGINS": "something_else"}, {"ADVKIT_PLUGINS": ""}]
)
def test_blocked_plugin_is_never_imported(installed_example, monkeypatch, env):
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.ALLOWED_PLUGINS_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if env.get("ADVKIT_PLUGINS"):  # names no installed plugin: said so
        with pytest.warns(plugins.PluginWarning, match="ADVKIT_PLUGINS names 'something_else'"):
            plugins.reload_plugins()
    else:
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
        with pytest.raises(
            registry.RegistrationError,
            match="attack 'pgd' is registered twice, by plugin 'pgd' "
            r"\(advkit .*, built-in\) and plugin 'dup'",
        ):
            registry.get_attack("pgd")
        assert "fgsm" in registry.attacks()  # the other names still work
        listing = CliRunner().invoke(cli, ["attacks"])  # the listing shows the clash instead of a traceback
        assert listing.exit_code == 0 and "CONFLICT: attack 'pgd' is registered twice" in listing.output
        result = CliRunner().invoke(cli, ["attack", "--model", "cnn", "--attack", "pgd", "--eps", "0.1", "-n", "1"])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
        assert "attack 'pgd' is registered twice" in result.output and "advkit uses neither" in result.output
    finally:
        plugins.unregister_plugin("dup")
    assert "pgd" in registry.attacks() and registry.get_attack("pgd").plugin.builtin


SHADOW = '''
from dataclasses import dataclass

import advkit
from advkit.attack import Attack


@dataclass(kw_only=True)
class Shadow(Attack):
    """Returns x: reports robust accuracy 1.0 with 0 passes if it ever replaces a real attack."""

    name = "{name}"

    def run(self, problem):
        return problem.x


@advkit.hookimpl
def register_attacks(register):
    register(Shadow)
'''


def _shadow(tmp_path, attack: str, distribution: str = "shadow-dist", entry_point: str | None = None) -> Path:
    """A third-party distribution whose entry point (named like a built-in) registers an attack named ``attack``."""
    module = f"advkit_shadow_{attack}"
    (tmp_path / f"{module}.py").write_text(SHADOW.format(name=attack))
    dist = tmp_path / f"{distribution.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[advkit]\n{entry_point or attack} = {module}\n")
    return tmp_path


def _run_cli(args: list[str], pythonpath: Path, **env: str):
    import os
    import subprocess

    child = {
        k: v for k, v in os.environ.items() if k not in (plugins.DISABLE_AUTOLOAD_ENV, plugins.ALLOWED_PLUGINS_ENV)
    }
    child.update(env, PYTHONPATH=os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "advkit", *args], env=child, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("attack", ["pgd", "untargeted"])
def test_a_third_party_plugin_cannot_replace_a_builtin_attack(tmp_path, attack):
    """An entry point named like a built-in, registering an attack of the same name that returns x: before, it won
    silently (robust accuracy 1.0 with 0 passes) or the default attack vanished; now the name is refused, naming both
    distributions, and `advkit plugins` shows the conflict."""
    path = _shadow(tmp_path, attack)
    run = _run_cli(["attack", "--model", "cnn", "--attack", attack, "--eps", "0.1", "-n", "2"], path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert (
        f"attack {attack!r} is registered twice, by plugin {attack!r} (advkit" in run.stderr
        and "(shadow-dist 1.0)" in run.stderr
        and "uninstall shadow-dist" in run.stderr
    )
    listed = _run_cli(["plugins", "--json"], path)
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows[attack]["builtin"] and not rows[f"shadow-dist:{attack}"]["builtin"]
    assert rows[attack]["conflicts"] == rows[f"shadow-dist:{attack}"]["conflicts"] != []
    assert "CONFLICT attack" in _run_cli(["plugins"], path).stdout
    alone = _run_cli(
        ["attack", "--model", "cnn", "--attack", attack, "--eps", "0.1", "-n", "2", "--json"],
        path,
        ADVKIT_DISABLE_PLUGIN_AUTOLOAD="1",
    )
    assert alone.returncode == 0, alone.stderr
    summary = json.loads(alone.stdout)
    assert summary["plugin"]["distribution"] == "advkit" and summary["backward_passes"] > 0


def test_a_distribution_calling_itself_advkit_is_not_builtin(tmp_path, monkeypatch):
    """Built-ins are advkit's own modules: a package named `advkit` with an entry point `pgd` is third-party, so
    ADVKIT_DISABLE_PLUGIN_AUTOLOAD=1 never imports it. (importlib.metadata shows one distribution per name, so which
    `advkit` it shows depends on sys.path; the fake one is put in front of the real entry points here.)"""
    from importlib.metadata import PathDistribution, entry_points

    path = _shadow(tmp_path, "pgd", distribution="advkit")
    fake = PathDistribution(next(path.glob("advkit-*.dist-info")))
    visible = [*fake.entry_points, *entry_points(group="advkit")]
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep for ep in visible if ep.group == group])
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    sys.modules.pop("advkit_shadow_pgd", None)
    try:
        plugins.reload_plugins()
        assert "advkit_shadow_pgd" not in sys.modules
        assert registry.get_attack("pgd").obj.__module__ == "advkit.plugins.builtin.pgd"
        monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV)
        plugins.reload_plugins()
        assert "advkit_shadow_pgd" in sys.modules  # now loaded, as the third-party plugin it is
        assert not plugins.plugin_info("advkit:pgd").builtin
        with pytest.raises(
            registry.RegistrationError,
            match=r"by plugin 'pgd' \(advkit .*, built-in\) and plugin "
            r"'advkit:pgd' \(advkit 1.0\)",
        ):
            registry.get_attack("pgd")
    finally:
        monkeypatch.undo()
        sys.modules.pop("advkit_shadow_pgd", None)
        plugins.reload_plugins()


def test_builtin_plugins_are_the_entry_points_of_the_project():
    """advkit's own modules (what makes a plugin built-in) and pyproject's entry points list the same plugins."""
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["advkit"] == plugins.BUILTIN_PLUGINS


def test_allow_list_naming_no_installed_plugin_warns(monkeypatch):
    monkeypatch.setenv(plugins.ALLOWED_PLUGINS_ENV, "no_such_plugin")
    try:
        with pytest.warns(
            plugins.PluginWarning, match="ADVKIT_PLUGINS names 'no_such_plugin', but no installed plugin"
        ):
            plugins.reload_plugins()
    finally:
        monkeypatch.undo()
        plugins.reload_plugins()


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


SENTINEL_PLUGIN = """
import os
import pathlib

pathlib.Path(os.environ["ADVKIT_TEST_SENTINEL"]).write_text("imported")  # runs on import, before any hook


def register_attacks(register):
    pass
"""


@pytest.mark.parametrize(
    "env, imported",
    [
        ({}, True),
        ({"ADVKIT_PLUGINS": "sentinel"}, True),
        ({"ADVKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}, False),
        ({"ADVKIT_PLUGINS": "random_sign,other"}, False),
    ],
)
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
    child_env = {
        k: v for k, v in os.environ.items() if k not in (plugins.DISABLE_AUTOLOAD_ENV, plugins.ALLOWED_PLUGINS_ENV)
    }
    child_env.update(
        env,
        ADVKIT_TEST_SENTINEL=str(sentinel),
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    )
    code = "from advkit import registry; names = registry.attacks(); assert 'pgd' in names"
    subprocess.run([sys.executable, "-c", code], env=child_env, check=True, timeout=120)
    assert sentinel.exists() == imported


def test_an_unrelated_installed_plugin_does_not_stop_a_sweep_from_resuming(installed_example, tmp_path, monkeypatch):
    """The README's own example plugin, installed, used to stop every resume with "changed: plugins": a sweep's
    fingerprint now lists only the plugins that provide its models, attacks and constraint sets."""
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.ALLOWED_PLUGINS_ENV, raising=False)
    out = tmp_path / "sweep"
    args = ["sweep", "--model", "cnn", "--attack", "fgsm", "--eps", "0.1", "-n", "4", "--no-checks", "--out", str(out)]
    first = CliRunner().invoke(cli, args)  # without the plugin
    assert first.exit_code == 0, first.output
    plugins.reload_plugins()  # now with it
    assert "random_sign" in registry.attacks()
    resumed = CliRunner().invoke(cli, args)
    assert resumed.exit_code == 0, resumed.output
    assert "random_sign" not in json.loads((out / "config.json").read_text())["plugins"]
