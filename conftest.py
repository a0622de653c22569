"""Repository-level pytest configuration: skip the doctests of modules whose optional peers are missing."""

import importlib.util
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before any test imports keras

collect_ignore = []
if importlib.util.find_spec("torch") is None:
    collect_ignore.append("jaxnorm/interop.py")
if importlib.util.find_spec("equinox") is None:
    collect_ignore.append("jaxnorm/equinox")
