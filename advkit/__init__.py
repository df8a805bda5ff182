"""advkit: adversarial robustness toolkit for PyTorch.

What a plugin author or a notebook needs is here, imported on first use (so ``advkit --help`` does not import
torch): ``Attack``, ``Problem``, ``optimize``, ``run_attack``, ``load_model`` (any model spec), ``load_dataset``
(any data spec), ``wrap`` (your own ``nn.Module`` behind an adapter) and ``hookimpl``.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pluggy

try:
    __version__ = version("advkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: Decorator for plugin authors: ``@advkit.hookimpl`` marks a hook implementation.
hookimpl = pluggy.HookimplMarker("advkit")

#: Public names -> the module that defines them (imported lazily by ``__getattr__``).
_EXPORTS = {
    "Attack": "advkit.attack",
    "Problem": "advkit.kernel",
    "optimize": "advkit.engine",
    "run_attack": "advkit.runner",
    "load_model": "advkit.model_specs",
    "wrap": "advkit.model_specs",
    "load_dataset": "advkit.datasets",
    "evaluate": "advkit.evaluation",
}

__all__ = ["__version__", "hookimpl", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'advkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
