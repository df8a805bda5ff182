"""Built-in plugin: fab (being written)."""
