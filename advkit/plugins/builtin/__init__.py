"""Built-in advkit plugins, installed as ``advkit.plugins.builtin`` and registered through entry points."""
