"""Built-in plugin: fmn (being written)."""
