"""A pytest plugin for running Flax's own test files with jaxnorm's drop-ins in place of Flax's classes
(tests/test_flax_suites.py): with ``JAXNORM_SWAP=1``, before Flax's tests import anything, every normalization
class of ``flax.linen`` and ``flax.nnx`` is replaced by ``jaxnorm.linen``'s and ``jaxnorm.nnx``'s; without it,
nothing changes (the baseline run)."""

import os

SWAPPED = ("BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm", "SpectralNorm", "WeightNorm")

if os.environ.get("JAXNORM_SWAP") == "1":
    import flax.linen
    import flax.nnx

    import jaxnorm.linen
    import jaxnorm.nnx

    for _name in SWAPPED:
        setattr(flax.linen, _name, getattr(jaxnorm.linen, _name))
        setattr(flax.nnx, _name, getattr(jaxnorm.nnx, _name))
