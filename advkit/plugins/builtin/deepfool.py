"""Built-in plugin: deepfool (being written)."""
