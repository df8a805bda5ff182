"""Name -> class/spec look-ups for everything plugins register, with the plugin that registered it.

A name registered twice (by two plugins, or twice by one) is a conflict: neither registration is
used, every look-up of that name raises :class:`RegistrationError` naming both plugins and their
distributions, and ``advkit plugins`` shows it. So a third-party plugin cannot silently replace a
built-in attack, model or constraint set, and cannot make one vanish either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from advkit import plugins
from advkit.errors import AdvkitError
from advkit.plugins import PluginInfo, get_plugin_manager, plugin_info


@dataclass(frozen=True)
class Registered:
    """One registered item and the plugin that provided it."""

    name: str
    obj: Any
    plugin: PluginInfo
    description: str


class UnknownNameError(AdvkitError, KeyError):
    """A name that no plugin registered; the message lists the valid names."""

    usage = True

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid) or '(none registered)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class RegistrationError(AdvkitError, TypeError, ValueError):
    """A plugin registered something invalid: an item without a string ``name``, or a name another plugin has."""


@dataclass(frozen=True)
class Conflict:
    """One name registered more than once; all of its registrations, in registration order."""

    kind: str
    name: str
    plugins: tuple[PluginInfo, ...]

    def message(self) -> str:
        who = " and ".join(f"plugin {p.name!r} ({p.origin()})" for p in self.plugins)
        third_party = sorted({p.distribution or p.name for p in self.plugins if not p.builtin})
        fix = (
            (
                f"uninstall {' or '.join(third_party)}, or leave it out with ADVKIT_PLUGINS (the third-party plugins "
                "to load, comma-separated) or ADVKIT_DISABLE_PLUGIN_AUTOLOAD=1 (built-ins only)"
            )
            if third_party
            else "rename one of them"
        )
        return f"{self.kind} {self.name!r} is registered twice, by {who}; advkit uses neither: {fix}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "plugins": [p.to_dict() for p in self.plugins]}


class Registrations(Mapping):
    """The items of one kind by name (sorted). Looking up a conflicted name raises its :class:`RegistrationError`
    (also ``name in registrations``), so no caller can take either registration for granted."""

    def __init__(self, kind: str, items: dict[str, Registered], conflicts: dict[str, Conflict]) -> None:
        self.kind = kind
        self._items = dict(sorted(items.items()))
        self.conflicts = conflicts

    def _refuse(self, name: object) -> None:
        if isinstance(name, str) and name in self.conflicts:
            raise RegistrationError(self.conflicts[name].message())

    def __getitem__(self, name: str) -> Registered:
        self._refuse(name)
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        self._refuse(name)
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def first_docstring_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


_cache: dict[str, Registrations] = {}
_cache_generation = -1


def reset() -> None:
    """Drop cached registrations (done automatically when the set of plugins changes)."""
    _cache.clear()


def _collect(hook_name: str, kind: str) -> Registrations:
    """Call one registration hook on every plugin, remembering which plugin registered what."""
    global _cache_generation
    pm = get_plugin_manager()
    if _cache_generation != plugins.generation():
        _cache.clear()
        _cache_generation = plugins.generation()
    if kind in _cache:
        return _cache[kind]
    items: dict[str, Registered] = {}
    owners: dict[str, list[PluginInfo]] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # registration order: built-ins first
        info = plugin_info(impl.plugin_name)

        def register(obj: Any, _info: PluginInfo = info) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise RegistrationError(
                    f"plugin {_info.name!r} ({_info.origin()}) registered a {kind} without a string 'name': {obj!r}; "
                    "uninstall the plugin, or set ADVKIT_DISABLE_PLUGIN_AUTOLOAD=1 or ADVKIT_PLUGINS=... to skip it"
                )
            owners.setdefault(name, []).append(_info)
            description = getattr(obj, "description", None) or first_docstring_line(obj)
            items.setdefault(name, Registered(name=name, obj=obj, plugin=_info, description=description))

        kwargs = {"register": register}
        impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
    conflicts = {name: Conflict(kind, name, tuple(who)) for name, who in owners.items() if len(who) > 1}
    for name in conflicts:
        items.pop(name)
    _cache[kind] = Registrations(kind, items, conflicts)
    return _cache[kind]


def _getter(hook_name: str, kind: str) -> tuple[Callable[[], Registrations], Callable[[str], Registered]]:
    def all_items() -> Registrations:
        return _collect(hook_name, kind)

    def get(name: str) -> Registered:
        items = all_items()
        if name not in items:  # a conflicted name raises its RegistrationError here
            raise UnknownNameError(kind, name, list(items))
        return items[name]

    all_items.__doc__ = f"Every registered {kind}, by name (conflicted names refuse to be looked up)."
    get.__doc__ = (
        f"The registered {kind} called ``name`` (UnknownNameError listing the valid names; "
        "RegistrationError when two plugins registered it)."
    )
    return all_items, get


attacks, get_attack = _getter("register_attacks", "attack")
models, get_model_spec = _getter("register_models", "model")
constraints, get_constraint = _getter("register_constraints", "constraint")
evaluators, get_evaluator = _getter("register_evaluators", "evaluator")
datasets, get_dataset_spec = _getter("register_datasets", "dataset")
transforms, get_transform = _getter("register_transforms", "transform")

_KINDS = (attacks, models, constraints, evaluators, datasets, transforms)


def conflicts() -> list[Conflict]:
    """Every name registered twice, of every kind."""
    return [c for kind in _KINDS for c in kind().conflicts.values()]


def list_plugins() -> list[dict]:
    """Every loaded plugin (see :func:`advkit.plugins.list_plugins`) with the conflicts it is part of."""
    found = conflicts()
    rows = plugins.list_plugins()
    for row in rows:
        row["conflicts"] = [
            f"{c.kind} {c.name!r}: " + ", ".join(f"{p.name} ({p.origin()})" for p in c.plugins)
            for c in found
            if any(p.name == row["name"] for p in c.plugins)
        ]
    return rows
