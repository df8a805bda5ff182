"""Built-in plugin: the S6 MNIST models (being written)."""
