"""Reading a JSON answer as it arrives, by path: results are parsed as they stream, never loaded
whole.

``PathReader`` is fed the body chunk by chunk (ijson's push interface, C backend where
installed) and keeps what a provider names by path (``"result.nodes_value.item"``: keys joined by
dots, an array's members ``item`` as in ijson; ``""`` is the whole document):

- ``items``: the members of a large array (a page's nodes, a result's rows), handed out as each one
  completes (or only counted);
- ``rows``: an array of arrays (ES|QL's ``values``), decoded fast by ``ArrayRows``;
- ``collect``: small values (an id, a state, the columns), built whole and kept;
- ``marks``: containers whose opening and closing is worth knowing (``opened``, ``closed``).

Anything else is skipped without being built. A path names one place only: inside, it is a tuple of
keys with ``ITEM`` for an array's member, so an object's key ``"item"``, a key holding a dot or an
empty key never read as another place (ijson's own prefixes confuse them). ``path`` maps such a
tuple to the one the provider names (snake_case keys, an optional wrapper dropped). Every failure of
the document is an UpstreamProtocolError naming ``where``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import ijson
import ijson.common
import ijson.utils

from query_relay.exceptions import UpstreamProtocolError
from query_relay.models import MAX_NESTING
from query_relay.upstream.errors import Where, first_line
from query_relay.upstream.rows import ArrayRows, NotRows, RowTooDeep


def _fastest_backend() -> Any:
    """ijson's C backend (yajl2_c) is several times faster; the pure-Python one is the fallback."""
    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:
        return ijson


IJSON = _fastest_backend()

# The byte a document ends with, by its first event.
_LAST_BYTES = {
    "start_map": b"}",
    "start_array": b"]",
    "string": b'"',
    "number": b"0123456789",
    "boolean": b"el",  # true, false
    "null": b"l",
}
# ijson parse events that open and close a container.
STARTS = frozenset(("start_map", "start_array"))
ENDS = frozenset(("end_map", "end_array"))


# A path inside PathReader: the keys read into, ITEM for an array's member.
ITEM = None
Path = tuple[str | None, ...]


def parse_path(path: str) -> Path:
    """``"result.nodes.item"`` -> ``("result", "nodes", ITEM)``; ``""`` -> ``()``, the document."""
    return tuple(ITEM if part == "item" else part for part in path.split(".")) if path else ()


class TooDeep(Exception):
    """A document nests deeper than MAX_NESTING."""


def _float(number: Decimal) -> float:
    """A number with a fraction or exponent, as a float (as the rows and json.loads read it);
    one too large for a float is an error, not infinity."""
    value = float(number)
    if math.isinf(value):
        raise ValueError("numeric (floating point) overflow")
    return value


def _containers_of(paths: Collection[Path]) -> set[Path]:
    """The paths of the containers ``paths`` lie in (``a.b.item`` -> ``""``, ``a``, ``a.b``)."""
    return {path[:end] for path in paths for end in range(len(path))}


class SurrogateGuard:
    """yajl joins a lone high surrogate escape with ANY ``\\u`` escape after it, as if they were a
    pair: ``"\\ud800\\u0041"`` would read as U+10041, the "A" lost (json reads ``"\\ud800A"``).
    Such a high surrogate is spelled ``?`` before yajl sees it, as yajl spells a lone one: the
    bytes pass through unchanged otherwise. An escape cut by the end of a chunk is held back until
    the next one says what follows it."""

    # A high surrogate escape followed by an escape that is not a low surrogate.
    _UNPAIRED = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?=\\u(?![dD][c-fC-F][0-9a-fA-F]{2}))")
    # The start of such a pair, cut by the end of the text (at most 11 bytes of its 12).
    _CUT = re.compile(
        rb"\\(?:u(?:[dD](?:[89abAB](?:[0-9a-fA-F](?:[0-9a-fA-F](?:\\(?:u[0-9a-fA-F]{0,3})?)?)?)?)?)?)?\Z"
    )

    def __init__(self) -> None:
        self._held = b""
        self._odd = False  # the bytes handed on end with an odd run of backslashes (one escapes the next)

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of ``chunk`` (after any held back) that can be handed on now."""
        data = self._held + chunk if self._held else chunk
        if b"\\" not in data:
            self._held, self._odd = b"", self._odd and not data
            return data
        cut = self._CUT.search(data, max(len(data) - 11, 0))
        end = cut.start() if cut is not None else len(data)
        self._held = data[end:]
        return self._spelled(data, end)

    def finish(self) -> bytes:
        """The input ended: what is held back, as it is."""
        data, self._held = self._held, b""
        return self._spelled(data, len(data))

    def _spelled(self, data: bytes, end: int) -> bytes:
        """``data[:end]`` with each unpaired high surrogate escape spelled ``?``; whether one is
        paired may be decided by the bytes after ``end``."""
        pieces: list[bytes] = []
        start = 0
        for match in self._UNPAIRED.finditer(data):
            if match.start() >= end:
                break
            if self._backslashes_before(data, match.start()) % 2:
                continue  # "\\\\ud800": a backslash, then text
            pieces += (data[start : match.start()], b"?")
            start = match.end()
        self._odd = self._backslashes_before(data, end) % 2 == 1
        return b"".join((*pieces, data[start:end])) if pieces else data[:end]

    def _backslashes_before(self, data: bytes, at: int) -> int:
        """The run of backslashes just before ``data[at]``, with those handed on before ``data``
        (only their parity is known, which is all that counts)."""
        start = at
        while start and data[start - 1] == 0x5C:
            start -= 1
        return at - start + (self._odd if start == 0 else 0)


class Subtree:
    """Follows one nested JSON value event by event, building it (or only skipping it); it may nest
    ``room`` levels at most."""

    def __init__(self, *, build: bool, room: int) -> None:
        self._builder = ijson.common.ObjectBuilder() if build else None
        self._depth = 0
        self._room = room

    def event(self, event: str, value: Any) -> bool:
        """Take one event; True once the value is complete."""
        if self._builder is not None:
            self._builder.event(event, value)
        if event in STARTS:
            self._depth += 1
            if self._depth > self._room:
                raise TooDeep
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
        path: Callable[[Path], Path] | None = None,
        before_rows: Callable[[], None] | None = None,
        object_only: bool = False,
        what: str = "answer",
    ) -> None:
        self.where = where
        self.keep_items = keep_items
        # Each wanted path as a tuple, and its name as given (what found, opened and closed say).
        self._names = {
            parse_path(name): name
            for name in (*items, *collect, *marks, *((rows,) if rows is not None else ()))
        }
        self._items, self._collect, self._marks = (
            set(map(parse_path, paths)) for paths in (items, collect, marks)
        )
        self._rows_name, self._rows = rows, parse_path(rows) if rows is not None else None
        self._path = path
        self.before_rows = before_rows
        self._what = what
        self._object_only = object_only
        # Basic events (no prefixes: ijson would build one per event, O(depth) each); the path of a
        # value is known from the containers read into, each named by its (unmapped) prefix.
        self._events: Any = ijson.utils.sendable_list()
        # Floats arrive as Decimal and are made floats here: yajl's own numbers stop at 64 bits.
        self._parser: Any = IJSON.basic_parse_coro(self._events, use_float=False)
        self._guard = SurrogateGuard()
        self._open: list[tuple[Path, bool]] = []  # (path, is a map) of each container read into
        self._key = ""  # the last key of the innermost map
        # Where a value is only followed: an item, a collected value, or a part skipped unread.
        self._subtree: Subtree | None = None
        self._following: tuple[str, Path] = ("skip", ())  # what the subtree is; a collected value's path
        # The containers worth reading into: those the wanted paths lie in, the marks and the rows.
        rows_path = {self._rows} if self._rows is not None else set()
        self._leads_in = _containers_of({*self._items, *self._collect, *self._marks, *rows_path})
        self._leads_in |= self._marks | rows_path
        self._row_text: ArrayRows | None = None
        self._last_byte = b""  # the last byte of the input that is not whitespace
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
        if b"\x0b" in chunk or b"\x0c" in chunk:  # no JSON holds them raw; yajl takes them for blanks
            raise self.protocol_error(f"the {self._what} is not valid JSON (a raw vertical tab or form feed)")
        last = chunk.rstrip(b" \t\n\r")[-1:]
        self._last_byte = last or self._last_byte
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
            if held := self._guard.finish():
                self._parser.send(held)
            self._parser.close()
        except ijson.IncompleteJSONError:
            raise self._ended_early() from None
        except (ijson.JSONError, UnicodeDecodeError) as error:
            raise self.protocol_error(f"the {self._what} is not valid JSON ({first_line(error)})") from None
        found = self._consume()
        if not self.complete:
            raise self._ended_early()
        if self._last_byte not in _LAST_BYTES.get(self.top_event or "", b""):
            # yajl reports trailing text only once it is a whole token: '{} "abc' passes it
            raise self.protocol_error(f"the {self._what} is not valid JSON (text after the document)")
        return found

    def _ended_early(self) -> UpstreamProtocolError:
        return self.protocol_error(f"the {self._what} ended before its JSON document did")

    def _feed_events(self, chunk: bytes) -> list[Any]:
        chunk = self._guard.feed(chunk)
        if not chunk:  # all held back (an empty chunk would tell ijson the input ended)
            return []
        try:
            self._parser.send(chunk)
        except (ijson.JSONError, UnicodeDecodeError) as error:  # yajl lets a lone surrogate through
            raise self.protocol_error(f"the {self._what} is not valid JSON ({first_line(error)})") from None
        return self._consume()

    def _feed_rows(self, chunk: bytes) -> list[Any]:
        row_text = self._row_text
        assert row_text is not None
        rows: list[Any] = []
        with self._row_errors():  # rows not kept are only counted (not built, where that can be)
            self.item_count += row_text.feed(chunk, rows if self.keep_items else None)
        if row_text.done:
            # ijson saw the rows' "[" last: the "]" closes them for it, then the rest follows.
            self._row_text, self.in_rows = None, False
            rows += self._feed_events(b"]" + row_text.rest)
        return rows

    @contextmanager
    def _row_errors(self) -> Iterator[None]:
        try:
            yield
        except RowTooDeep:
            raise self.protocol_error(f"the {self._what} nests deeper than {MAX_NESTING} levels") from None
        except NotRows as not_rows:
            raise self.protocol_error(
                f"'{self._rows_name}' holds something other than rows ({not_rows.event})"
            ) from None
        except (ValueError, RecursionError) as error:
            problem = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
            raise self.protocol_error(f"the {self._what} is not valid JSON ({problem})") from None

    # - the event machine -

    def _consume(self) -> list[Any]:
        found: list[Any] = []
        try:
            for event, read in self._events:
                value = _float(read) if read.__class__ is Decimal else read
                subtree = self._subtree
                if subtree is None:
                    self._event(event, value, found)
                elif subtree.event(event, value):
                    self._subtree_done(subtree, found)
        except TooDeep:
            raise self.protocol_error(f"the {self._what} nests deeper than {MAX_NESTING} levels") from None
        except ValueError as error:
            raise self.protocol_error(f"the {self._what} is not valid JSON ({error})") from None
        finally:
            self._events.clear()
        return found

    def _event(self, event: str, value: Any, found: list[Any]) -> None:
        if event == "map_key":
            self._key = value
            return
        if event in ENDS:
            prefix, _ = self._open.pop()
            name = self._name(prefix)
            if name in self._marks:
                self.closed.add(self._names[name])
            self.complete = not self._open
            return
        prefix = self._child_prefix()
        name = self._name(prefix)
        if self.top_event is None:
            self.top_event = event
            if self._object_only and event != "start_map":
                raise self.protocol_error(f"the {self._what} is not one JSON object")
        if name in self._items:
            if event in STARTS:
                self._follow(event, value, ("item", name), build=self.keep_items)
            else:
                self._item_done(value, found)
                self.complete = not self._open
        elif name in self._collect:
            if event in STARTS:
                self._follow(event, value, ("collect", name), build=True)
            else:
                if value is not None:
                    self.found.setdefault(self._names[name], []).append(value)
                self.complete = not self._open
        elif event in STARTS:
            if name not in self._leads_in:
                self._follow(event, value, ("skip", name), build=False)  # read past, unbuilt
                return
            if len(self._open) >= MAX_NESTING:
                raise TooDeep
            self._open.append((prefix, event == "start_map"))
            if name in self._marks:
                self.opened.add(self._names[name])
            if event == "start_array" and name == self._rows:
                if self.before_rows is not None:
                    self.before_rows()
                self._row_text, self.in_rows = ArrayRows(room=MAX_NESTING - len(self._open)), True
        elif not self._open:
            self.complete = True  # a document that is one scalar

    def _child_prefix(self) -> Path:
        """The path of the value now starting (``("result", "nodes", ITEM)``)."""
        if not self._open:
            return ()
        parent, is_map = self._open[-1]
        return (*parent, self._key if is_map else ITEM)

    def _name(self, prefix: Path) -> Path:
        return self._path(prefix) if self._path else prefix

    def _follow(self, event: str, value: Any, following: tuple[str, Path], *, build: bool) -> None:
        """Follow the container now starting to its end: ``(what, path)``, what being an
        ``item``, a value to ``collect`` or one to ``skip``; see ``_subtree_done``."""
        self._subtree = Subtree(build=build, room=MAX_NESTING - len(self._open))
        self._following = following
        self._subtree.event(event, value)

    def _subtree_done(self, subtree: Subtree, found: list[Any]) -> None:
        self._subtree, (what, path) = None, self._following
        if what == "item":
            self._item_done(subtree.value, found)
        elif what == "collect":
            self.found.setdefault(self._names[path], []).append(subtree.value)
        self.complete = not self._open  # a top-level container followed to its end

    def _item_done(self, value: Any, found: list[Any]) -> None:
        self.item_count += 1
        if self.keep_items:
            found.append(value)
