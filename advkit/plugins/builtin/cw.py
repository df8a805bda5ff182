"""Built-in plugin: cw (being written)."""
