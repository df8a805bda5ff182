"""Name -> class/spec look-ups for everything plugins register, with the plugin that registered it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from advkit.plugins import PluginInfo, get_plugin_manager, plugin_info


@dataclass(frozen=True)
class Registered:
    """One registered item and the plugin that provided it."""

    name: str
    obj: Any
    plugin: PluginInfo
    description: str


class UnknownNameError(KeyError):
    """A name that no plugin registered; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid) or '(none registered)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class RegistrationError(TypeError, ValueError):
    """A plugin registered something invalid: an item without a string ``name`` or a name taken twice."""


def first_docstring_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


_cache: dict[str, dict[str, Registered]] = {}


def reset() -> None:
    """Drop cached registrations (called when the set of plugins changes)."""
    _cache.clear()


def _collect(hook_name: str, kind: str) -> dict[str, Registered]:
    """Call one registration hook on every plugin, remembering which plugin registered what."""
    if kind in _cache:
        return _cache[kind]
    pm = get_plugin_manager()
    items: dict[str, Registered] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):  # registration order: first registered first
        info = plugin_info(impl.plugin_name)

        def register(obj: Any, _info: PluginInfo = info) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise RegistrationError(f"plugin {_info.name!r} registered a {kind} without a string 'name': {obj!r}")
            if name in items:
                other = items[name].plugin.name
                raise RegistrationError(f"{kind} {name!r} is registered twice (plugins {other!r} and {_info.name!r})")
            description = getattr(obj, "description", None) or first_docstring_line(obj)
            items[name] = Registered(name=name, obj=obj, plugin=_info, description=description)

        kwargs = {"register": register}
        impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
    _cache[kind] = dict(sorted(items.items()))
    return _cache[kind]


def _getter(hook_name: str, kind: str) -> tuple[Callable[[], dict[str, Registered]], Callable[[str], Registered]]:
    def all_items() -> dict[str, Registered]:
        return _collect(hook_name, kind)

    def get(name: str) -> Registered:
        items = all_items()
        if name not in items:
            raise UnknownNameError(kind, name, list(items))
        return items[name]

    all_items.__doc__ = f"Every registered {kind}, by name."
    get.__doc__ = f"The registered {kind} called ``name`` (raises UnknownNameError listing valid names)."
    return all_items, get


attacks, get_attack = _getter("register_attacks", "attack")
models, get_model_spec = _getter("register_models", "model")
constraints, get_constraint = _getter("register_constraints", "constraint")
evaluators, get_evaluator = _getter("register_evaluators", "evaluator")
