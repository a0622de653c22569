"""The hostile-input table (issue 12): bad arguments, numerical extremes against NumPy float64, empty inputs,
masks holding NaN/inf and their gradients, state-safety streams, config and hashing round trips, drop-in state
loading. Each row asserts either the exact error type and a message naming the argument, or a result verified
against a reference. The rows live in tests/adversarial/*.py, one module per class of hostile input.
"""

import re

import pytest

from tests.adversarial import Case, parts

CASES: list[Case] = parts.all_cases()


def test_the_table_is_large_and_names_are_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert len(CASES) >= 100, len(CASES)


def _tiered(cases: list[Case]) -> list:
    """The default tier runs the first row of each kind (the first two words of its name, e.g. ``masked_nan``);
    the other rows are in the ``full`` tier (.ci/run runs them all); rows that need Keras or PyTorch are in the
    ``peers`` tier."""
    seen, params = set(), []
    for c in cases:
        kind = tuple(c.name.split("_")[:2])
        marks = [] if kind not in seen else [pytest.mark.full]
        if c.needs:  # rows that run Keras or PyTorch: the peers tier (tests/conftest.py skips them without)
            marks = [pytest.mark.peers(*c.needs)]
        params.append(pytest.param(c, id=c.name, marks=marks))
        seen.add(kind)
    return params


@pytest.mark.own_tiers
@pytest.mark.parametrize("case", _tiered(CASES))
def test_case(case: Case):
    if case.raises is not None:
        with pytest.raises(BaseException) as info:
            case.run()
        err = info.value
        if case.subclass_ok:
            assert isinstance(err, case.raises), f"{type(err).__name__}: {err}"
        else:
            assert type(err) is case.raises, f"expected {case.raises.__name__}, got {type(err).__name__}: {err}"
        assert re.search(case.match, str(err)), f"message {str(err)!r} does not match {case.match!r}"
    else:
        case.check(case.run())
