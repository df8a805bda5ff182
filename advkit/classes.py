"""The one class-name resolver: a class index from what a user types (an index, a name, or a unique part of one)."""

from __future__ import annotations

from collections.abc import Sequence

from advkit.errors import ParameterError

__all__ = ["resolve_class"]


def resolve_class(class_names: Sequence[str], text: str | int, what: str = "class") -> int:
    """A class index from an index ("812") or a name: exact ("space shuttle"), else case-insensitive, else a
    unique part of one ("shuttle").

    Raises ParameterError (a ValueError) naming the candidates when the name is unknown or ambiguous; ``what``
    names the option in the message (``--target``).
    """
    n = len(class_names)
    raw = str(text).strip()
    if raw.lstrip("-").isdigit():
        index = int(raw)
        if not 0 <= index < n:
            raise ParameterError(f"{what} {index} is out of range: classes are 0..{n - 1}")
        return index
    wanted = raw.lower()
    exact = [i for i, c in enumerate(class_names) if c == raw]
    folded = [i for i, c in enumerate(class_names) if c.lower() == wanted]
    partial = [i for i, c in enumerate(class_names) if wanted and wanted in c.lower()]
    matches = exact or folded or partial
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ParameterError(f"{what}: no class is called {raw!r} (give a class index 0..{n - 1} or a class name)")
    shown = ", ".join(f"{i} {class_names[i]!r}" for i in matches[:10]) + (" ..." if len(matches) > 10 else "")
    raise ParameterError(f"{what}: {raw!r} matches {len(matches)} classes: {shown}; give the class index")
