"""Plugin discovery: one pluggy ``PluginManager("advkit")`` fed from the ``advkit`` entry-point group.

advkit's own attacks, models and constraints are entry points of the ``advkit`` distribution,
found exactly as a third-party package's are. Two environment variables control discovery:

* ``ADVKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only advkit's own (built-in) plugins.
* ``ADVKIT_PLUGINS=name1,name2`` loads the built-ins plus only the named third-party plugins.

A plugin that is filtered out is never imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from advkit import hookspecs

ENTRY_POINT_GROUP = "advkit"
BUILTIN_DISTRIBUTION = "advkit"
DISABLE_AUTOLOAD_ENV = "ADVKIT_DISABLE_PLUGIN_AUTOLOAD"
ALLOWED_PLUGINS_ENV = "ADVKIT_PLUGINS"


class PluginLoadError(RuntimeError):
    """An entry point in the ``advkit`` group could not be imported."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "distribution": self.distribution, "version": self.version, "builtin": self.builtin}


_pm: pluggy.PluginManager | None = None
_plugin_info: dict[str, PluginInfo] = {}


def _is_builtin(ep: EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION


def _allowed(ep: EntryPoint) -> bool:
    if _is_builtin(ep):
        return True
    if os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return False
    allowed = os.environ.get(ALLOWED_PLUGINS_ENV)
    if allowed is None:
        return True
    return ep.name in {name.strip() for name in allowed.split(",") if name.strip()}


def _new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("advkit")
    pm.add_hookspecs(hookspecs)
    _plugin_info.clear()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if not _allowed(ep) or pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as error:  # a broken third-party plugin must name itself
            raise PluginLoadError(
                f"advkit plugin {ep.name!r} ({ep.value}) failed to load: {error!r}. "
                f"Uninstall it, or set {DISABLE_AUTOLOAD_ENV}=1 or {ALLOWED_PLUGINS_ENV}=... to skip it."
            ) from error
        pm.register(module, name=ep.name)
        dist = ep.dist
        _plugin_info[ep.name] = PluginInfo(
            name=ep.name,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
            builtin=_is_builtin(ep),
        )
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and entry points loaded) on first use."""
    global _pm
    if _pm is None:
        _pm = _new_plugin_manager()
        from advkit import registry

        registry.reset()
    return _pm


def reload_plugins() -> pluggy.PluginManager:
    """Forget loaded plugins and discover them again (after installing one, or in tests)."""
    global _pm
    _pm = None
    return get_plugin_manager()


def register_plugin(plugin: ModuleType | object, name: str, version: str | None = None) -> None:
    """Register a plugin object directly (for notebooks and tests); it behaves like an entry point."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    _plugin_info[name] = PluginInfo(name=name, distribution=None, version=version, builtin=False)
    from advkit import registry

    registry.reset()


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered by name."""
    pm = get_plugin_manager()
    pm.unregister(name=name)
    _plugin_info.pop(name, None)
    from advkit import registry

    registry.reset()


def plugin_info(name: str) -> PluginInfo:
    """Distribution and version of a loaded plugin."""
    get_plugin_manager()
    return _plugin_info.get(name, PluginInfo(name=name, distribution=None, version=None, builtin=False))


def list_plugins() -> list[dict]:
    """Every loaded plugin with its hooks and version, sorted by name."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        info = plugin_info(name).to_dict()
        rows.append({**info, "hooks": hooks})
    return sorted(rows, key=lambda row: row["name"])
