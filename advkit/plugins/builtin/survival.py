"""Built-in plugin: the survival evaluator (S12: flip, crop, rotation, grayscale)."""

from __future__ import annotations

import advkit
from advkit.survival import Survival


@advkit.hookimpl
def register_evaluators(register):
    register(Survival)
