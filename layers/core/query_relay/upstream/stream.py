"""An answer's body as it streams: read its head, then replay it with the rest.

A provider must often read the start of an answer to learn what it is (running or finished, which
columns, a count or rows) before it knows how to hand the rest on. ``StreamedAnswer`` reads the
head on demand and keeps it (the chunks, and the items parsed from them); ``items`` then yields
the head's items followed by the rest's, ``raw_chunks`` the untouched bytes, every chunk still
parsed so that the rows are counted and a broken document is caught. ``DelimitedRecords`` does
the same for CSV (and other delimited text) bodies.
"""

from __future__ import annotations

import codecs
import csv
import io
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import httpx

from query_relay.upstream.errors import Where, json_object, read_error_body

# The csv module refuses a field longer than ``csv.field_size_limit()`` (131,072 characters unless
# raised), and that limit is the whole process's. A result's cell has no bound of its own: the JSON
# readers take a cell of any size (128 MB in bench/cells.py), only the memory of the function
# reading it bounds it. So a delimited cell has none either: the limit is raised here, once, when
# this module is imported, to the largest the csv module takes (a C long: sys.maxsize where it is
# 64 bits, as on Lambda), and never lowered (a higher one set elsewhere stays). Nothing else in
# query_relay reads csv (results.py only writes it, which the limit does not touch).
CSV_FIELD_MAX_CHARS = sys.maxsize
try:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_MAX_CHARS))
except OverflowError:  # pragma: no cover - a C long of 32 bits (Windows)
    CSV_FIELD_MAX_CHARS = 2**31 - 1
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_MAX_CHARS))


class PushReader(Protocol):
    item_count: int

    def feed(self, chunk: bytes) -> list[Any]: ...

    def finish(self) -> list[Any]: ...


class StreamedAnswer[R: PushReader]:
    """One answer on the wire, parsed by ``reader`` (a ``PathReader``) as it is read."""

    def __init__(self, response: httpx.Response, reader: R, where: Where) -> None:
        self.reader = reader
        self.where = where
        self._chunks = response.iter_bytes()
        self._head_items: list[Any] = []
        self._head_chunks: list[bytes] = []
        self._ended = False

    def read_until(self, enough: Callable[[R], bool]) -> None:
        """Read chunks until ``enough(reader)`` or the answer ends. Readers stop at the start of a
        result's items at the latest, so a head is small whatever the size of the result."""
        with self.where.transport():
            while not self._ended and not enough(self.reader):
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._ended = True
                    self._head_items += self.reader.finish()
                else:
                    self._head_chunks.append(chunk)
                    self._head_items += self.reader.feed(chunk)

    @property
    def head(self) -> list[Any]:
        """The items read with the head so far (``items`` hands them out first)."""
        return self._head_items

    def items(self) -> Iterator[Any]:
        """The head's items, then every later one; the document is checked to its end."""
        with self.where.transport():
            head, self._head_items, self._head_chunks = self._head_items, [], []
            yield from head
            if not self._ended:
                for chunk in self._chunks:
                    yield from self.reader.feed(chunk)
                self._ended = True
                yield from self.reader.finish()

    def raw_chunks(self) -> Iterator[bytes]:
        """The answer's bytes as received (the head's first), each parsed on the way."""
        with self.where.transport():
            head, self._head_chunks, self._head_items = self._head_chunks, [], []
            yield from head  # already parsed while reading the head
            if not self._ended:
                for chunk in self._chunks:
                    self.reader.feed(chunk)
                    yield chunk
                self._ended = True
                self.reader.finish()

    def drain(self) -> None:
        """Read (and check) the rest of the answer, keeping nothing."""
        for _ in self.items():
            pass


def as_line(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """One document's bytes as received, then a newline unless they end with one: how a native
    object holds several answers (pages, partitions, chunks), one a line."""
    last = b""
    for chunk in chunks:
        if chunk:
            last = chunk
            yield chunk
    if not last.endswith(b"\n"):
        yield b"\n"


def raw_chunks(response: httpx.Response, where: Where) -> Iterator[bytes]:
    """An answer's bytes as they arrive, unread by any parser (html, xlsx ... results)."""
    with where.transport():
        yield from response.iter_bytes()


def small_object(response: httpx.Response, where: Where) -> dict[str, Any]:
    """A small JSON object answer (a token, a task's status, a saved query), read bounded."""
    with where.transport():
        document = json_object(read_error_body(response))
    if document is None:
        raise where.protocol_error(f"the answer is not a JSON object (HTTP {response.status_code})")
    return document


def text_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """UTF-8 text lines (ends kept, BOM dropped) from byte chunks, for the csv module: the lines
    ``io.StringIO(text, newline="")`` reads from the whole text, each ended by '\\n', '\\r\\n' or
    a lone '\\r' (the csv reader itself joins the lines of a quoted value, and reads a record the same
    only if the lines are cut where that reader cuts them). A line many chunks long is kept in
    pieces and joined once it ends: only the new text is searched for line ends (issue 13:
    splitting all the text kept at every chunk took time in the square of the line's length)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending: list[str] = []  # the line begun and not ended yet, in pieces
    for chunk in chunks:
        text = decoder.decode(chunk)
        if not text:
            continue
        if pending and pending[-1].endswith("\r") and text[0] != "\n":
            yield "".join(pending)  # a lone '\r' ended it
            pending = []
        if "\r" in text:  # a '\r\n' or lone '\r' line end, maybe: cut as StringIO cuts (in C)
            lines = io.StringIO(text, newline="").readlines()
            rest = "" if lines[-1].endswith("\n") else lines.pop()  # a '\r' last waits for a '\n'
            end = ""
        else:  # the most common case, cut quicker
            *lines, rest = text.split("\n")
            end = "\n"
        if lines:
            first, *lines = lines
            yield "".join((*pending, first, end))
            pending = []
            for line in lines:
                yield line + end
        if rest:
            pending.append(rest)
    pending.append(decoder.decode(b"", final=True))
    if unread := decoder.getstate()[0]:  # utf-8-sig keeps back a body's first bytes that begin a BOM
        raise UnicodeDecodeError("utf-8", unread, 0, len(unread), "unexpected end of data")
    if last := "".join(pending):
        yield last


class DelimitedRecords:
    """A delimited text body (csv, tab-separated): a header line names the columns, every other
    record is a row. ``native_chunks`` hands the bytes on as they arrived while it counts the
    records; ``rows`` checks that each has as many values as the header."""

    def __init__(
        self, chunks: Iterator[bytes], where: Where, *, delimiter: str = ",", keep_bytes: bool
    ) -> None:
        self.where = where
        self._keep_bytes = keep_bytes
        self._seen: list[bytes] = []
        self._records = csv.reader(text_lines(self._tee(chunks)), delimiter=delimiter)
        self.header: list[str] = []
        self.item_count = 0

    def _tee(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if self._keep_bytes:
                self._seen.append(chunk)
            yield chunk

    def read_header(self) -> list[str]:
        with self.where.transport(), self._text_errors():
            self.header = next(self._records, [])
        return self.header

    def rows(self) -> Iterator[list[str]]:
        width = len(self.header)
        with self.where.transport(), self._text_errors():
            for record in self._rows():
                if len(record) != width:
                    raise self.where.protocol_error(
                        f"csv record {self.item_count} has {len(record)} values, the header {width}"
                    )
                yield record

    def native_chunks(self) -> Iterator[bytes]:
        with self.where.transport(), self._text_errors():
            for _ in self._rows():
                yield from self._drain()
            yield from self._drain()

    @contextmanager
    def _text_errors(self) -> Iterator[None]:
        """Bytes that are not UTF-8, or text the csv module refuses: not delimited text."""
        try:
            yield
        except (UnicodeDecodeError, csv.Error) as error:
            problem = error.reason if isinstance(error, UnicodeDecodeError) else str(error)
            raise self.where.protocol_error(f"the answer is not delimited UTF-8 text ({problem})") from None

    def _rows(self) -> Iterator[list[str]]:
        for record in self._records:
            if record:
                self.item_count += 1
                yield record
            elif len(self.header) == 1:  # one column: an empty line is an empty value
                self.item_count += 1
                yield [""]
            # else a blank line between records, not a row

    def _drain(self) -> Iterator[bytes]:
        seen, self._seen = self._seen, []
        yield from seen
