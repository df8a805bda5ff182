"""Built-in plugin: square (being written)."""
