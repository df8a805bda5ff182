"""advkit: adversarial robustness toolkit for PyTorch."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("advkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: Decorator for plugin authors: ``@advkit.hookimpl`` marks a hook implementation.
hookimpl = pluggy.HookimplMarker("advkit")
