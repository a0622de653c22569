"""A pytest plugin for running the peers' own test files with jaxnorm's drop-ins in place of their classes
(tests/test_peer_suites.py; loaded as ``-p peer_suite_plugin`` with tests/ on the path, since the peers' test
directories are packages named ``tests`` too): with ``JAXNORM_SWAP=1``, before their tests import anything, every
normalization class of ``flax.linen`` and ``flax.nnx`` is replaced by ``jaxnorm.linen``'s and ``jaxnorm.nnx``'s
(and, with ``JAXNORM_SWAP_EQUINOX=1``, those of ``equinox.nn`` by ``jaxnorm.equinox``'s); without it, nothing
changes (the baseline run)."""

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

EQX_SWAPPED = ("BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "SpectralNorm", "WeightNorm")

if os.environ.get("JAXNORM_SWAP") == "1" and os.environ.get("JAXNORM_SWAP_EQUINOX") == "1":
    import equinox.nn

    import jaxnorm.equinox

    for _name in EQX_SWAPPED:
        setattr(equinox.nn, _name, getattr(jaxnorm.equinox, _name))
