"""Built-in plugin: the constraint sets usable by name on the CLI."""

from __future__ import annotations

import advkit
from advkit.constraints import CONSTRAINT_TYPES


@advkit.hookimpl
def register_constraints(register):
    for cls in CONSTRAINT_TYPES.values():
        register(cls)
