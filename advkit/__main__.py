"""``python -m advkit``: the same command line as ``advkit``."""

from advkit.cli import main

main()
