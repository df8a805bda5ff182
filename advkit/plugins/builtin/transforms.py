"""Built-in plugin: the random transforms EOT gradients draw (``--gradient eot:flip,crop,...``)."""

from __future__ import annotations

import advkit
from advkit.gradients import EOT_TRANSFORMS, EOTTransform


@advkit.hookimpl
def register_transforms(register):
    for name, (apply, draws, description) in EOT_TRANSFORMS.items():
        register(EOTTransform(name=name, apply=apply, draws=draws, description=description))
