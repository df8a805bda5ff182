"""Plugin discovery: one pluggy ``PluginManager("advkit")`` fed from the ``advkit`` entry-point group.

advkit's own attacks, models and constraints are ordinary plugins: modules with hook
implementations, declared as entry points of the ``advkit`` distribution exactly as a third-party
package declares its own. What makes a plugin *built-in* is its module, not its entry-point name
or its distribution's name: :data:`BUILTIN_PLUGINS` lists advkit's own modules, and those are
always loaded (also when the package metadata is stale). Any other entry point is third-party,
whatever it calls itself, so a distribution named ``advkit`` or an entry point named ``pgd``
cannot replace or switch off a built-in: a third-party plugin that registers a name a built-in
already has is refused by :mod:`advkit.registry` with an error naming both distributions.

Two environment variables control third-party discovery:

* ``ADVKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the built-ins.
* ``ADVKIT_PLUGINS=name1,name2`` loads the built-ins plus only the named third-party plugins
  (a name that matches no installed plugin is warned about).

A plugin that is filtered out is never imported.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from advkit import hookspecs
from advkit.errors import AdvkitError

ENTRY_POINT_GROUP = "advkit"
BUILTIN_DISTRIBUTION = "advkit"
DISABLE_AUTOLOAD_ENV = "ADVKIT_DISABLE_PLUGIN_AUTOLOAD"
ALLOWED_PLUGINS_ENV = "ADVKIT_PLUGINS"

#: advkit's own plugins, name -> module, in registration order. Every entry is also an entry point of
#: the ``advkit`` distribution (pyproject.toml); a test keeps the two lists equal.
BUILTIN_PLUGINS: dict[str, str] = {
    "untargeted": "advkit.plugins.builtin.untargeted",
    "targeted": "advkit.plugins.builtin.targeted",
    "binary": "advkit.plugins.builtin.binary",
    "fgsm": "advkit.plugins.builtin.fgsm",
    "pgd": "advkit.plugins.builtin.pgd",
    "noise": "advkit.plugins.builtin.noise",
    "visualize": "advkit.plugins.builtin.visualize",
    "lookalike": "advkit.plugins.builtin.lookalike",
    "apgd": "advkit.plugins.builtin.apgd",
    "apgd_targeted": "advkit.plugins.builtin.apgd_targeted",
    "universal": "advkit.plugins.builtin.universal",
    "square": "advkit.plugins.builtin.square",
    "fmn": "advkit.plugins.builtin.fmn",
    "ddn": "advkit.plugins.builtin.ddn",
    "cw": "advkit.plugins.builtin.cw",
    "deepfool": "advkit.plugins.builtin.deepfool",
    "fab": "advkit.plugins.builtin.fab",
    "mnist_models": "advkit.plugins.builtin.mnist_models",
    "mnist_s6_models": "advkit.plugins.builtin.mnist_s6_models",
    "constraints": "advkit.plugins.builtin.constraints",
    "imagenet_models": "advkit.plugins.builtin.imagenet_models",
    "survival": "advkit.plugins.builtin.survival",
    "datasets": "advkit.plugins.builtin.datasets",
    "transforms": "advkit.plugins.builtin.transforms",
}
_BUILTIN_MODULES = frozenset(BUILTIN_PLUGINS.values())


class PluginLoadError(AdvkitError, RuntimeError):
    """An entry point in the ``advkit`` group could not be imported."""


class PluginWarning(UserWarning):
    """Plugin discovery found something worth knowing (e.g. ADVKIT_PLUGINS naming no installed plugin)."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "distribution": self.distribution, "version": self.version, "builtin": self.builtin}

    def origin(self) -> str:
        """``"advkit 0.1.0, built-in"``, ``"shadow-dist 1.0"`` or ``"registered in-process"``."""
        if self.distribution is None:
            return "registered in-process" + (f", version {self.version}" if self.version else "")
        text = f"{self.distribution} {self.version or '(no version)'}"
        return f"{text}, built-in" if self.builtin else text


_pm: pluggy.PluginManager | None = None
_plugin_info: dict[str, PluginInfo] = {}
#: Bumped whenever the set of plugins changes; :mod:`advkit.registry` drops its caches when it moves.
_generation = 0


def generation() -> int:
    """A number that changes whenever plugins are (re)loaded, registered or unregistered."""
    return _generation


def _changed() -> None:
    global _generation
    _generation += 1


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes"}


def _declares_builtin(ep: EntryPoint) -> bool:
    """The entry point names one of advkit's own modules (whichever distribution declares it)."""
    return ep.module in _BUILTIN_MODULES and not ep.attr


def _allowed_names() -> set[str] | None:
    """Third-party plugin names ADVKIT_PLUGINS admits (None: all; an empty set: none)."""
    allowed = os.environ.get(ALLOWED_PLUGINS_ENV)
    if allowed is None:
        return None
    return {name.strip() for name in allowed.split(",") if name.strip()}


def _builtin_info(name: str) -> PluginInfo:
    from advkit import __version__

    return PluginInfo(name=name, distribution=BUILTIN_DISTRIBUTION, version=__version__, builtin=True)


def _unique_name(pm: pluggy.PluginManager, ep: EntryPoint) -> str:
    """The entry point's name, or ``distribution:name`` when a plugin of that name is already registered."""
    if not pm.has_plugin(ep.name):
        return ep.name
    dist = ep.dist.name if ep.dist else "unknown"
    name, n = f"{dist}:{ep.name}", 2
    while pm.has_plugin(name):
        name, n = f"{dist}:{ep.name}#{n}", n + 1
    return name


def _new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("advkit")
    pm.add_hookspecs(hookspecs)
    _plugin_info.clear()
    for name, module_name in BUILTIN_PLUGINS.items():
        pm.register(importlib.import_module(module_name), name=name)
        _plugin_info[name] = _builtin_info(name)
    if _truthy(os.environ.get(DISABLE_AUTOLOAD_ENV)):
        return pm
    allowed = _allowed_names()
    seen: set[str] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if _declares_builtin(ep):
            continue  # advkit's own module: loaded above, whoever declares it
        seen.add(ep.name)
        if allowed is not None and ep.name not in allowed:
            continue
        try:
            module = ep.load()
        except Exception as error:  # a broken third-party plugin must name itself
            raise PluginLoadError(
                f"advkit plugin {ep.name!r} ({ep.value}) failed to load: {error!r}. "
                f"Uninstall it, or set {DISABLE_AUTOLOAD_ENV}=1 or {ALLOWED_PLUGINS_ENV}=... to skip it."
            ) from error
        if pm.is_registered(module):
            continue  # two entry points for one module register it once
        name = _unique_name(pm, ep)
        pm.register(module, name=name)
        dist = ep.dist
        _plugin_info[name] = PluginInfo(
            name=name, distribution=dist.name if dist else None, version=dist.version if dist else None, builtin=False
        )
    if allowed:
        missing = sorted(allowed - seen)
        if missing:
            warnings.warn(
                f"{ALLOWED_PLUGINS_ENV} names {', '.join(map(repr, missing))}, but no installed plugin has that name "
                f"(installed third-party plugins: {', '.join(sorted(seen)) or 'none'})",
                PluginWarning,
                stacklevel=2,
            )
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and entry points loaded) on first use."""
    global _pm
    if _pm is None:
        _pm = _new_plugin_manager()
        _changed()
    return _pm


def reload_plugins() -> pluggy.PluginManager:
    """Forget loaded plugins and discover them again (after installing one, or in tests)."""
    global _pm
    _pm = None
    return get_plugin_manager()


def register_plugin(plugin: ModuleType | object, name: str, version: str | None = None) -> None:
    """Register a plugin object directly (for notebooks and tests); it behaves like a third-party entry point."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    _plugin_info[name] = PluginInfo(name=name, distribution=None, version=version, builtin=False)
    _changed()


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered by name."""
    pm = get_plugin_manager()
    pm.unregister(name=name)
    _plugin_info.pop(name, None)
    _changed()


def plugin_info(name: str) -> PluginInfo:
    """Distribution and version of a loaded plugin."""
    get_plugin_manager()
    return _plugin_info.get(name, PluginInfo(name=name, distribution=None, version=None, builtin=False))


def list_plugins() -> list[dict]:
    """Every loaded plugin with its hooks and version, sorted by name (conflicts: see ``registry.list_plugins``)."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        info = plugin_info(name).to_dict()
        rows.append({**info, "hooks": hooks})
    return sorted(rows, key=lambda row: row["name"])
