"""A value made when it is first read (sans-IO, no imports of the package).

``Plugin.exchange`` gives an :class:`~proxywasm_host.http.scenario.ExchangeResult` its two
sides as :class:`Later` values: a test reads a header or two, a fuzzer or a benchmark
often nothing, and decoding both sides took a third of an exchange's overhead.  Compiled
with the core (``speedups.COMPILED_MODULES``), so that making one costs the exchange a C
call rather than a Python ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final


@final
class Later:
    """``fn(*args)``, made by whoever reads it first (``ExchangeResult``'s properties).
    ``fn`` must depend only on ``args``: snapshots taken when the Later is made."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def make(self) -> Any:
        return self.fn(*self.args)
