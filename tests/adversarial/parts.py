"""Collects the table's rows from every part module (each defines ``CASES``)."""

import importlib
import pkgutil

import tests.adversarial as _pkg


def all_cases():
    cases = []
    for info in sorted(pkgutil.iter_modules(_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("cases_"):
            cases.extend(importlib.import_module(f"tests.adversarial.{info.name}").CASES)
    return cases
