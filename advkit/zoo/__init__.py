"""advkit model zoo: architectures, training and committed weights (installed as ``advkit.zoo``).

Modules:

* :mod:`advkit.zoo.architectures` -- ``Table2CNN``, ``BinarizedTable2CNN``, ``Sign`` / ``SignSTE``, ``build_model``.
* :mod:`advkit.zoo.weights` -- ``WEIGHTS_DIR``, ``load_manifest``, ``load_zoo_module`` (SHA-256 checked, safetensors only).
* :mod:`advkit.zoo.train` -- ``train_model`` and the command ``python -m advkit.zoo.train``.

The committed weights (``weights/cnn.safetensors``, ``weights/bnn.safetensors``) and their
``manifest.json`` and learning curves were produced by the commands recorded in the manifest.
"""
