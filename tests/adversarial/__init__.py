"""The hostile-input table of tests/test_adversarial.py, in parts (one module per class of hostile input).

Each part module defines ``CASES: list[Case]``. A case either must raise (``raises`` the exact error type and
``match`` a regex its message must contain: the argument's name, what was received, the fix) or must return a
result that ``check`` verifies against an independent reference (NumPy float64, the peers, an identity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table.

    ``run()`` performs the hostile call (with ``needs``, it uses those peers: the row joins the ``peers`` tier
    and skips, saying why, where they are not installed). With ``raises`` set, the call must raise exactly that
    type (not a subclass chosen by accident: ``type(err) is raises`` unless ``subclass_ok``) with a message
    matching ``match``; otherwise ``check(result)`` must pass (it asserts; a case with neither is rejected).
    """

    name: str
    run: Callable[[], Any]
    raises: type[BaseException] | None = None
    match: str | None = None
    check: Callable[[Any], None] | None = None
    subclass_ok: bool = False
    needs: tuple[str, ...] = ()  # peers the row runs (e.g. ("keras",)): a `peers` test, skipped without them

    def __post_init__(self):
        if (self.raises is None) == (self.check is None):
            raise ValueError(f"case {self.name!r}: give exactly one of `raises` and `check`")
        if self.raises is not None and not self.match:
            raise ValueError(f"case {self.name!r}: an error case must say what its message names (`match`)")
