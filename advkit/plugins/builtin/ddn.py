"""Built-in plugin: ddn (being written)."""
