"""Not a package: this is the root of a clone of the advkit repository.

Python imports this file when a script runs from the folder that *holds* the clone (named ``advkit``), instead of
the installed package, which lives one level down (``advkit/advkit``). Say so, rather than fail later with a bare
``ImportError: cannot import name ... (unknown location)``.
"""

import sys

if "_pytest" not in sys.modules:  # pytest imports this file as the root of the tree it collects: nothing to say then
    raise ImportError(
        "'import advkit' found the advkit repository folder (" + __file__.rsplit("/", 1)[0] + "), not the advkit "
        "package: the script runs from the folder that holds the clone. Install advkit (pip install -e <clone>) and "
        "run from another folder, or run from inside the clone."
    )
