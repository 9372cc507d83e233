"""Incremental JSON parsing for providers: results are parsed as they stream, never loaded whole."""

from __future__ import annotations

from typing import Any

import ijson
import ijson.common


def _fastest_backend() -> Any:
    """ijson's C backend (yajl2_c) is several times faster; the pure-Python one is the fallback."""
    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:
        return ijson


IJSON = _fastest_backend()

# ijson parse events that open and close a container.
STARTS = ("start_map", "start_array")
ENDS = ("end_map", "end_array")


class Subtree:
    """Follows one nested JSON value event by event, building it (or only skipping it)."""

    def __init__(self, *, build: bool) -> None:
        self._builder = ijson.common.ObjectBuilder() if build else None
        self._depth = 0

    def event(self, event: str, value: Any) -> bool:
        """Take one event; True once the value is complete."""
        if self._builder is not None:
            self._builder.event(event, value)
        if event in STARTS:
            self._depth += 1
        elif event in ENDS:
            self._depth -= 1
        return self._depth == 0

    @property
    def value(self) -> Any:
        """The built value (None when only skipping)."""
        return self._builder.value if self._builder is not None else None
