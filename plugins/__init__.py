"""Built-in advkit plugins, installed as ``advkit_plugins`` and registered through entry points."""
