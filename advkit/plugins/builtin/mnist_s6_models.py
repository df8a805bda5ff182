"""Built-in plugin: the S6 MNIST models with committed weights.

* ``s6`` -- model A: the standard S6 CNN.
* ``s6_adv`` -- model B: the same S6 CNN adversarially trained (S13, Madry-style PGD-5 at
  L-inf eps 0.3 in [-1, 1] units, i.e. 0.15 on the 0-1 scale).
* ``madry_adv`` -- the MadryLab MNIST challenge architecture adversarially trained at L-inf eps 0.3 on the 0-1
  scale (0.6 in [-1, 1] units; PGD-7, 40 epochs, eps ramped up over the first 10), the zoo model on which strong
  and weak attacks differ.
* ``s6bn`` -- the S6 CNN with BatchNorm, standard training (registered only if its
  weights are in the manifest).
* ``s6_adv_rand`` -- a randomized defense: ``s6_adv`` behind Gaussian input noise drawn anew at every call
  (:class:`advkit.zoo.architectures.InputNoise`; options ``sigma``, default 0.3 in [-1, 1] units, and ``seed``),
  marked ``stochastic`` so the runner accepts it; evaluate it with ``advkit evaluate --version rand``.

Adapters are built exactly like the ``cnn`` / ``bnn`` ones (:func:`advkit.plugins.builtin.mnist_models._adapter`).
"""

from __future__ import annotations

import advkit
from advkit.models import ModelAdapter, ModelSpec
from advkit.plugins.builtin.mnist_models import _adapter

S6_DESCRIPTION = "Model A: standard S6 CNN (conv32-pool-conv32-pool-fc500-fc10), inputs in [-1, 1]"
S6_ADV_DESCRIPTION = (
    "Model B: S6 CNN adversarially trained with PGD-5 at eps 0.3 in [-1, 1] units (0.15 on 0-1), inputs in [-1, 1]"
)
MADRY_ADV_DESCRIPTION = (
    "MadryLab MNIST challenge CNN (conv32-pool-conv64-pool-fc1024-fc10) adversarially trained with PGD-7 at eps 0.6 in "
    "[-1, 1] units (0.3 on 0-1), inputs in [-1, 1]"
)
S6BN_DESCRIPTION = "S6 CNN with BatchNorm after each conv, standard training, inputs in [-1, 1]"
S6_ADV_RAND_DESCRIPTION = (
    "Randomized defense: s6_adv behind Gaussian input noise (std sigma=0.3 in [-1, 1] units) drawn anew at every "
    "call; options sigma, seed; evaluate with --version rand"
)
#: The noise std of ``s6_adv_rand`` in model units ([-1, 1]; 0.15 on the 0-1 scale).
RAND_SIGMA = 0.3


def load_s6() -> ModelAdapter:
    return _adapter("s6", S6_DESCRIPTION)


def load_s6_adv() -> ModelAdapter:
    return _adapter("s6_adv", S6_ADV_DESCRIPTION)


def load_madry_adv() -> ModelAdapter:
    return _adapter("madry_adv", MADRY_ADV_DESCRIPTION)


def load_s6bn() -> ModelAdapter:
    return _adapter("s6bn", S6BN_DESCRIPTION)


def load_s6_adv_rand(sigma: float = RAND_SIGMA, seed: int = 0) -> ModelAdapter:
    """``s6_adv`` behind :class:`~advkit.zoo.architectures.InputNoise` (std ``sigma`` in model units, its own
    generator seeded with ``seed``): random at every call, the global RNG untouched."""
    import math

    from advkit.errors import ParameterError
    from advkit.zoo.architectures import InputNoise

    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ParameterError(f"s6_adv_rand: sigma must be a number > 0 (model units), got {sigma!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ParameterError(f"s6_adv_rand: seed must be an integer in [0, 2^63), got {seed!r}")
    base = load_s6_adv()
    return ModelAdapter(
        InputNoise(base.module, float(sigma), seed).eval(),
        name="s6_adv_rand",
        bounds=base.bounds,
        input_shape=base.input_shape,
        class_names=base.class_names,
        dataset=base.dataset,
        description=S6_ADV_RAND_DESCRIPTION,
        # no "sha256": the fingerprint is then the state dict's, which holds sigma and seed (another sigma, another
        # model); the weights' own sha256 is recorded as base_sha256
        metadata={
            "base": "s6_adv", "base_sha256": base.metadata["sha256"], "sigma": float(sigma), "seed": seed,
            "stochastic": True,
        },
    )  # fmt: skip


def _has_weights(name: str) -> bool:
    from advkit.zoo.weights import load_manifest

    try:
        return name in load_manifest()
    except (FileNotFoundError, ValueError):
        return False


@advkit.hookimpl
def register_models(register):
    register(ModelSpec(name="s6", description=S6_DESCRIPTION, load=load_s6, dataset="mnist"))
    register(ModelSpec(name="s6_adv", description=S6_ADV_DESCRIPTION, load=load_s6_adv, dataset="mnist"))
    register(ModelSpec(name="s6_adv_rand", description=S6_ADV_RAND_DESCRIPTION, load=load_s6_adv_rand, dataset="mnist"))
    if _has_weights("s6bn"):
        register(ModelSpec(name="s6bn", description=S6BN_DESCRIPTION, load=load_s6bn, dataset="mnist"))
    if _has_weights("madry_adv"):
        register(ModelSpec(name="madry_adv", description=MADRY_ADV_DESCRIPTION, load=load_madry_adv, dataset="mnist"))
