"""Reading a JSON answer as it arrives, by path: results are parsed as they stream, never loaded
whole.

``PathReader`` is fed the body chunk by chunk (ijson's push interface, C backend where
installed) and keeps what a provider names by path (``"result.nodes_value.item"``, arrays'
members are ``item`` as in ijson):

- ``items``: the members of a large array (a page's nodes, a result's rows), handed out as each one
  completes (or only counted);
- ``rows``: an array of arrays (ES|QL's ``values``), decoded fast by ``ArrayRows``;
- ``collect``: small values (an id, a state, the columns), built whole and kept;
- ``marks``: containers whose opening and closing is worth knowing (``opened``, ``closed``).

Anything else is skipped without being built. ``path`` maps ijson's prefixes to the names the
provider uses (snake_case keys, an optional wrapper dropped). Every failure of the document is an
UpstreamProtocolError naming ``where``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import ijson
import ijson.common
import ijson.utils

from query_relay.exceptions import UpstreamProtocolError
from query_relay.upstream.errors import Where, first_line
from query_relay.upstream.rows import ArrayRows, NotRows


def _fastest_backend() -> Any:
    """ijson's C backend (yajl2_c) is several times faster; the pure-Python one is the fallback."""
    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:
        return ijson


IJSON = _fastest_backend()

# ijson parse events that open and close a container.
STARTS = frozenset(("start_map", "start_array"))
ENDS = frozenset(("end_map", "end_array"))


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


class PathReader:
    """One JSON document fed chunk by chunk; see the module's doc for what it keeps."""

    def __init__(
        self,
        where: Where,
        *,
        items: Collection[str] = (),
        rows: str | None = None,
        collect: Collection[str] = (),
        marks: Collection[str] = (),
        keep_items: bool = True,
        path: Callable[[str], str] | None = None,
        before_rows: Callable[[], None] | None = None,
        object_only: bool = False,
        what: str = "answer",
    ) -> None:
        self.where = where
        self.keep_items = keep_items
        self._items, self._rows, self._collect, self._marks = set(items), rows, set(collect), set(marks)
        self._path = path
        self.before_rows = before_rows
        self._what = what
        self._object_only = object_only
        self._events: Any = ijson.utils.sendable_list()
        self._parser: Any = IJSON.parse_coro(self._events, use_float=True)
        self._item: Subtree | None = None
        self._value: tuple[str, Subtree] | None = None
        self._row_text: ArrayRows | None = None
        self._depth = 0
        self.top_event: str | None = None
        self.found: dict[str, list[Any]] = {}
        self.opened: set[str] = set()
        self.closed: set[str] = set()
        self.item_count = 0
        self.in_rows = False
        self.complete = False

    # - what was read -

    def first(self, path: str, default: Any = None) -> Any:
        values = self.found.get(path)
        return values[0] if values else default

    def has(self, path: str) -> bool:
        return path in self.found

    def protocol_error(self, problem: str) -> UpstreamProtocolError:
        return self.where.protocol_error(problem)

    # - feeding -

    def feed(self, chunk: bytes) -> list[Any]:
        """Parse one more chunk; the items (or rows) it completed, if kept."""
        if not chunk:  # to ijson an empty chunk means the input ended
            return []
        if self._row_text is not None:
            return self._feed_rows(chunk)
        if self._rows is None or self.complete:
            return self._feed_events(chunk)
        # Fed in slices that end at a "[", so that the one opening the rows is the last byte ijson saw.
        found: list[Any] = []
        start = 0
        while (bracket := chunk.find(b"[", start)) >= 0:
            found += self._feed_events(chunk[start : bracket + 1])
            start = bracket + 1
            if self.in_rows:
                return found + self._feed_rows(chunk[start:])
        if start == 0 or start < len(chunk):  # an empty chunk would tell ijson the input ended
            found += self._feed_events(chunk[start:])
        return found

    def finish(self) -> list[Any]:
        """The input ended: the document must be complete. The items completed at the very end."""
        if self._row_text is not None:
            with self._row_errors():
                self._row_text.finish()
        try:
            self._parser.close()
        except ijson.IncompleteJSONError:
            raise self._ended_early() from None
        except (ijson.JSONError, UnicodeDecodeError) as error:
            raise self.protocol_error(f"the {self._what} is not valid JSON ({first_line(error)})") from None
        found = self._consume()
        if not self.complete:
            raise self._ended_early()
        return found

    def _ended_early(self) -> UpstreamProtocolError:
        return self.protocol_error(f"the {self._what} ended before its JSON document did")

    def _feed_events(self, chunk: bytes) -> list[Any]:
        try:
            self._parser.send(chunk)
        except (ijson.JSONError, UnicodeDecodeError) as error:  # yajl lets a lone surrogate through
            raise self.protocol_error(f"the {self._what} is not valid JSON ({first_line(error)})") from None
        return self._consume()

    def _feed_rows(self, chunk: bytes) -> list[Any]:
        row_text = self._row_text
        assert row_text is not None
        rows: list[Any] = []
        with self._row_errors():
            self.item_count += row_text.feed(chunk, rows)
        if not self.keep_items:
            rows = []
        if row_text.done:
            # ijson saw the rows' "[" last: the "]" closes them for it, then the rest follows.
            self._row_text, self.in_rows = None, False
            rows += self._feed_events(b"]" + row_text.rest)
        return rows

    @contextmanager
    def _row_errors(self) -> Iterator[None]:
        try:
            yield
        except NotRows as not_rows:
            raise self.protocol_error(
                f"'{self._rows}' holds something other than rows ({not_rows.event})"
            ) from None
        except (ValueError, RecursionError) as error:
            problem = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
            raise self.protocol_error(f"the {self._what} is not valid JSON ({problem})") from None

    # - the event machine -

    def _consume(self) -> list[Any]:
        found: list[Any] = []
        for prefix, event, value in self._events:
            item = self._item
            if item is not None:
                if item.event(event, value):
                    self._item_done(item.value, found)
                continue
            if self._value is not None:
                self._value_event(event, value)
                continue
            if event == "map_key":
                continue
            self._event(self._path(prefix) if self._path else prefix, event, value, found)
        self._events.clear()
        return found

    def _event(self, path: str, event: str, value: Any, found: list[Any]) -> None:
        if self.top_event is None:
            self.top_event = event
            if self._object_only and event != "start_map":
                raise self.protocol_error(f"the {self._what} is not one JSON object")
        if event in ENDS:
            self._depth -= 1
            if path in self._marks:
                self.closed.add(path)
            self.complete = self._depth == 0
        elif path in self._items:
            if event in STARTS:
                self._item = Subtree(build=self.keep_items)
                self._item.event(event, value)
            else:
                self._item_done(value, found)
        elif path in self._collect:
            if event in STARTS:
                self._value = (path, Subtree(build=True))
                self._value[1].event(event, value)
            elif value is not None:
                self.found.setdefault(path, []).append(value)
        elif event in STARTS:
            self._depth += 1
            if path in self._marks:
                self.opened.add(path)
            if event == "start_array" and path == self._rows:
                if self.before_rows is not None:
                    self.before_rows()
                self._row_text, self.in_rows = ArrayRows(), True
        elif self._depth == 0:
            self.complete = True  # a document that is one scalar

    def _item_done(self, value: Any, found: list[Any]) -> None:
        self._item = None
        self.item_count += 1
        if self.keep_items:
            found.append(value)

    def _value_event(self, event: str, value: Any) -> None:
        assert self._value is not None
        path, subtree = self._value
        if subtree.event(event, value):
            self._value = None
            self.found.setdefault(path, []).append(subtree.value)
