"""Every chunked reader against the reference parsers (issue 13), by property: random JSON documents,
written every way json.dumps (or a hand with random whitespace) writes them and cut into chunks at
random points, read by PathReader (collect, items, rows), ArrayRows and the providers' readers give
what ``json.loads`` gives; damaged documents (cut off, a byte inserted, replaced or dropped, NaN and
Infinity, trailing garbage, invalid UTF-8, bad escapes) are read as ``json.loads`` reads them or
are an UpstreamProtocolError, never another exception, and never read when ``json.loads`` refuses
them; DelimitedRecords reads what the csv module reads.

The reference is ``json.loads`` of the body decoded as strict UTF-8, with the readers' documented
strictness on top (``oracle``):

- UTF-8 only, no byte order mark (RFC 8259 8.1): ``json.loads(bytes)`` also guesses UTF-16/32 and
  drops a BOM; ``json.loads(str)`` refuses a BOM as the readers do;
- NaN, Infinity, -Infinity and a number too large for a float (1e400) are refused: ``json.loads``
  reads them (as nan, inf), but they are not JSON and no result format can hold them;
- a lone surrogate escape (``"\\ud800"``) is read as "?" (ijson's spelling, the rows follow it) or
  refused (a lone low one outside the rows: yajl hands on bytes that are not UTF-8);
- a collected ``null`` is not kept (``first`` gives None either way; protobuf JSON omits zeros);
- duplicate keys (RFC 8259 4: "unpredictable"): a streaming reader sees each, json.loads keeps the
  last; such documents are only checked for the kind of exception.

Generated keys include "", "item" and keys with a "." (which ijson's prefixes would confuse with
other places), and documents nest at most 20 levels (to keep examples quick; the 64-level cap has
its own tests in test_upstream_readers.py).

The differences found (issue 13) are the tests at the end of the file; all of them pass now.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from query_relay.exceptions import UpstreamProtocolError
from query_relay.models import MAX_NESTING
from query_relay.providers.base import NativeResult, TabularResult
from query_relay.providers.esql import answer as esql_answer
from query_relay.providers.looker import answer as looker_answer
from query_relay.providers.veza import answer as veza_answer
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.rows import ArrayRows
from query_relay.upstream.stream import DelimitedRecords, StreamedAnswer
from tests.unit.test_upstream_readers import WHERE, Chunks, read, rows_reader


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


MANY = _settings(80)
SOME = _settings(40)
FEW = _settings(20)
# A reader that loops forever on some input fails the test instead of hanging the run.
NO_HANG = pytest.mark.timeout(120)

# --- JSON values ---------------------------------------------------------------------------------

# Integers beyond 64 bits everywhere (yajl's own integers stop at 64 bits).
BIG_INTS = (
    st.integers(2**63 - 2, 2**80)
    | st.integers(-(2**80), -(2**63) + 2)
    | st.sampled_from([2**63, -(2**63), 2**64 - 1, 2**64, -(2**64), 10**30])
)
INTS = st.integers() | BIG_INTS
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [-0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e16, 0.1, 1e-7]
)
# Every code point a UTF-8 text holds (controls, non-BMP; no surrogates), and JSON's troublemakers:
# what json.dumps escapes, non-BMP characters (a surrogate pair when ensure_ascii), brackets.
TRICKY = [
    *'"\\/\b\f\n\r\t\x00\x1f\x7f',
    *"\u2028\u2029\ufeff\ufffféü€日\U0001f600\U0010ffff",
    "],[",
    "[[",
    "]]",
    "{}",
    ",",
    ":",
    "\\u0041",
    "NaN",
]
TEXT = st.lists(st.characters(codec="utf-8") | st.sampled_from(TRICKY), max_size=8).map("".join)
# Keys are any text, the names a path spells alike too ("", "item", a key with a "."; see
# test_a_path_names_one_place_only).
KEYS = TEXT | st.sampled_from(["", "item", "a.b", "result.nodes", "nodes.item", "."])
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT
DEPTH_LIMIT = 20  # see the module doc of jsonpath: deep nesting is a cost being worked on


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
).filter(lambda value: depth(value) <= DEPTH_LIMIT)
CELLS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=5,
)
# Rows of every shape: mixed widths, empty rows, nested arrays and objects (adjacent multi-valued
# fields put a "],[" inside a row).
ROWS = st.lists(st.lists(CELLS, max_size=5), max_size=6)
SMALL_ROWS = st.lists(st.lists(CELLS, max_size=4), max_size=4)

# --- writing and cutting -------------------------------------------------------------------------

WHITESPACE = st.sampled_from(["", "", " ", "\n", "\r\n", "\t", " \t\n\r "])


def _spaced(value: Any, spaces: Iterator[str], ensure_ascii: bool) -> str:
    """JSON with whitespace from ``spaces`` around every token."""
    if isinstance(value, list):
        members = [next(spaces) + _spaced(item, spaces, ensure_ascii) + next(spaces) for item in value]
        return "[" + (",".join(members) or next(spaces)) + "]"
    if isinstance(value, dict):
        pairs = [
            next(spaces)
            + json.dumps(key, ensure_ascii=ensure_ascii)
            + next(spaces)
            + ":"
            + next(spaces)
            + _spaced(item, spaces, ensure_ascii)
            + next(spaces)
            for key, item in value.items()
        ]
        return "{" + (",".join(pairs) or next(spaces)) + "}"
    return json.dumps(value, ensure_ascii=ensure_ascii)


@st.composite
def encoded(draw: st.DrawFn, value: Any, *, sort_keys: bool = True) -> bytes:
    """``value`` as JSON bytes: json.dumps with any ensure_ascii, indent, separators and key order
    (the keys sorted too, unless not ``sort_keys``), or random whitespace between all tokens; blank
    before and after."""
    ensure_ascii = draw(st.booleans(), label="ensure_ascii")
    if draw(st.booleans(), label="json.dumps"):
        text = json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=draw(st.sampled_from([None, 0, 1, 2, "\t"]), label="indent"),
            separators=draw(st.sampled_from([None, (",", ":"), (", ", ": "), (" ,\n", " :\t")])),
            sort_keys=sort_keys and draw(st.booleans(), label="sort_keys"),
        )
    else:
        spaces = draw(st.lists(WHITESPACE, min_size=1, max_size=8), label="spaces")
        text = _spaced(value, itertools.cycle(spaces), ensure_ascii)
    return (draw(WHITESPACE) + text + draw(WHITESPACE)).encode()


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut anywhere: whole, one byte a chunk, or at random points (a repeated point makes
    an empty chunk), with empty chunks anywhere."""
    how = draw(st.sampled_from(["cuts", "cuts", "cuts", "bytes", "whole"]), label="chunking")
    if how == "whole":
        chunks = [data]
    elif how == "bytes":
        chunks = [data[at : at + 1] for at in range(len(data))]
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12), label="cuts"))
        chunks = [data[start:end] for start, end in itertools.pairwise([0, *cuts, len(data)])]
    for at in draw(st.lists(st.integers(0, len(chunks)), max_size=3), label="empty chunks"):
        chunks.insert(at, b"")
    return chunks


def _shuffled(draw: st.DrawFn, parts: dict[str, Any]) -> dict[str, Any]:
    order = draw(st.permutations(list(parts)), label="key order")
    return {key: parts[key] for key in order}


def _in_order(document: dict[str, Any], first: str, then: str) -> dict[str, Any]:
    """``document`` with the keys ``first`` and ``then`` swapped if ``then`` came first."""
    keys = list(document)
    at, later = keys.index(first), keys.index(then)
    if at > later:
        keys[at], keys[later] = keys[later], keys[at]
    return {key: document[key] for key in keys}


# --- documents of every shape a reader reads -----------------------------------------------------

COLUMNS = st.lists(st.fixed_dictionaries({"name": TEXT, "type": st.sampled_from(["keyword", "long"])}))


@st.composite
def esql_answers(draw: st.DrawFn, rows: st.SearchStrategy[list[list[Any]]] = ROWS) -> dict[str, Any]:
    """An ES|QL answer, its fields in any order (``values`` before ``columns`` too)."""
    parts: dict[str, Any] = {
        "id": draw(TEXT),
        "is_running": False,
        "columns": draw(COLUMNS),
        "values": draw(rows),
    }
    optional = {
        "took": draw(INTS),
        "is_partial": draw(st.booleans()),
        "documents_found": draw(INTS),
        "_clusters": {"details": [[1], [2]], "x": draw(VALUES)},  # a "],[" after the values
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True), label="optional"):
        parts[key] = optional[key]
    return _shuffled(draw, parts)


@st.composite
def looker_results(draw: st.DrawFn) -> dict[str, Any]:
    """A json_detail result: rows of cells ``{"value", "rendered"?}``, the fields, the errors."""
    names = draw(st.lists(TEXT, min_size=1, max_size=4, unique=True), label="names")
    cell = st.builds(lambda value, rendered: {"value": value, "rendered": rendered}, VALUES, TEXT) | VALUES
    data = draw(st.lists(st.fixed_dictionaries(dict.fromkeys(names, cell)), max_size=5), label="data")
    fields = {"dimensions": [{"name": name, "type": draw(TEXT)} for name in names], "measures": []}
    parts: dict[str, Any] = {"data": data, "fields": fields, "sql": draw(TEXT)}
    if draw(st.booleans()):
        parts["errors"] = [{"level": "warning", "message": draw(TEXT)}]
    return _shuffled(draw, parts)


_CAMEL = {"nodes_value": "nodesValue", "next_page_token": "nextPageToken", "has_more": "hasMore"}
_CAMEL |= {"result_type": "resultType", "number_value": "numberValue", "error_reason": "errorReason"}


@st.composite
def veza_pages(draw: st.DrawFn) -> dict[str, Any]:
    """An AsyncTask holding a page of nodes: wrapped or not, camelCase or snake_case keys, enums as
    names or numbers, ``nodes_value`` an object or a bare list."""
    camel = draw(st.booleans(), label="camelCase")

    def keyed(parts: dict[str, Any]) -> dict[str, Any]:
        return _shuffled(
            draw, {(_CAMEL.get(key, key) if camel else key): value for key, value in parts.items()}
        )

    node = st.fixed_dictionaries(
        {"id": TEXT, "type": TEXT},
        optional={
            "name": TEXT,
            "properties": st.dictionaries(TEXT, VALUES, max_size=3),
            "destination_node_count": INTS | INTS.map(str),
            "risk_level": TEXT,
            "extra": VALUES,
        },
    )
    nodes = draw(st.lists(node, max_size=5), label="nodes")
    page: Any = nodes
    if draw(st.booleans()):
        page = keyed({"values": nodes, "next_page_token": draw(TEXT), "has_more": draw(st.booleans())})
    task = keyed(
        {
            "id": draw(TEXT),
            "state": draw(st.sampled_from(["COMPLETE", 3, "3"])),
            "status": draw(st.sampled_from(["SUCCEEDED", 1])),
            "result": keyed({"result_type": "NODES", "nodes_value": page}),
        }
    )
    return {"task": task} if draw(st.booleans(), label="wrapped") else task


@st.composite
def named_documents(draw: st.DrawFn) -> dict[str, Any]:
    """What the ``collect`` reader wants, ``doc`` and ``outer.doc``, among values skipped unread."""
    outer = _shuffled(draw, {"doc": draw(VALUES), "x": draw(VALUES)})
    return _shuffled(draw, {"doc": draw(VALUES), "outer": outer, "skip": draw(VALUES)})


@st.composite
def item_documents(draw: st.DrawFn) -> dict[str, Any]:
    nodes = draw(st.lists(VALUES, max_size=6), label="nodes")
    result = _shuffled(draw, {"count": len(nodes), "nodes": nodes, "more": draw(VALUES)})
    return _shuffled(draw, {"result": result, "other": draw(VALUES)})


SHAPES: dict[str, st.SearchStrategy[Any]] = {
    "any value": VALUES,
    "named": named_documents(),
    "items": item_documents(),
    "array of items": st.lists(VALUES, max_size=6),
    "array of rows": ROWS,
    "esql": esql_answers(),
    "looker json_detail": looker_results(),
    "veza page": veza_pages(),
}

# --- the reference -------------------------------------------------------------------------------


class _Duplicate(Exception):
    """An object names a key twice."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Duplicate
    return found


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large for a float")
    return value


_STRICT = json.JSONDecoder(parse_constant=_not_a_number, parse_float=_finite)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _question_marks(value: Any) -> Any:
    """``value`` with each lone surrogate spelled "?", as the readers spell it."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("?", value)
    if isinstance(value, list):
        return [_question_marks(item) for item in value]
    if isinstance(value, dict):
        return {_question_marks(key): _question_marks(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Verdict:
    """What the reference makes of a body: ``value``, or why it is ``refused``."""

    value: Any = None
    refused: str | None = None
    ambiguous: bool = False  # duplicate keys
    surrogates: bool = False  # a lone surrogate: "?" or a refusal

    @property
    def accepted(self) -> bool:
        return self.refused is None and not self.ambiguous


def oracle(body: bytes) -> Verdict:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return Verdict(refused=f"not UTF-8 ({error.reason})")
    try:
        value = json.loads(text, object_pairs_hook=_pairs)
    except _Duplicate:
        return Verdict(ambiguous=True)
    except ValueError as error:
        return Verdict(refused=f"json.loads: {error}")
    try:
        _STRICT.decode(text)
    except ValueError as error:
        return Verdict(refused=f"json.loads reads it, but {error}")
    if depth(value) > MAX_NESTING:
        return Verdict(refused=f"nests deeper than {MAX_NESTING}")
    fixed = _question_marks(value)
    return Verdict(value=fixed, surrogates=json.dumps(fixed) != json.dumps(value))


def canonical(value: Any) -> str:
    """Equal only when the JSON is equal, types too (1 is not 1.0 nor True; -0.0 is not 0.0)."""
    return json.dumps(value)


# --- the readers, each with what it must read from json.loads' value ------------------------------


class Shape(Exception):
    """The document is JSON, but not what the reader reads: it must refuse it."""


def _member(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _array(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _rows_of(value: Any) -> list[Any]:
    rows = _array(value)
    if any(not isinstance(row, list) for row in rows):
        raise Shape("not rows")
    return rows


def _array_of_rows(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise Shape("not an array")
    return _rows_of(value)


def read_array_rows(chunks: Iterable[bytes], *, keep: bool = True) -> Any:
    """A body that is one array of rows, read by ArrayRows from just after its "[" (as PathReader
    hands it on); ArrayRows' ValueErrors become protocol errors, as in PathReader. Only counted
    (as for a native result) unless ``keep``: then the count."""
    row_text, head, rest = ArrayRows(), b"", b""
    rows: list[list[Any]] = []
    count = 0
    try:
        for chunk in chunks:
            if row_text.done:
                rest += chunk
                continue
            text = chunk
            if not head.startswith(b"["):
                head = (head + chunk).lstrip(b" \t\n\r")
                if not head:
                    continue
                if not head.startswith(b"["):
                    raise WHERE.protocol_error("not an array")
                text = head[1:]
            count += row_text.feed(text, rows if keep else None)
        if not head.startswith(b"["):
            raise WHERE.protocol_error("no document")
        if not row_text.done:
            row_text.finish()
    except (ValueError, RecursionError) as error:  # ArrayRows' own errors: NotRows, JSONDecodeError ...
        raise WHERE.protocol_error(f"not rows ({type(error).__name__}: {error})") from None
    if (row_text.rest + rest).strip(b" \t\n\r"):
        raise WHERE.protocol_error("trailing garbage")
    assert count == len(rows) or not keep
    return rows if keep else count


def count_array_rows(chunks: Iterable[bytes]) -> Any:
    return read_array_rows(chunks, keep=False)


def _run_collect(chunks: Iterable[bytes]) -> Any:
    reader = PathReader(WHERE, collect=("doc", "outer.doc"))
    assert read(reader, chunks) == []
    return [reader.first("doc"), reader.first("outer.doc")]


def _expect_collect(value: Any) -> Any:
    return [_member(value, "doc"), _member(value, "outer", "doc")]


def _run_items(chunks: Iterable[bytes]) -> Any:
    chunks = list(chunks)
    reader = PathReader(WHERE, items=("result.nodes.item",), collect=("result.count",))
    counter = PathReader(WHERE, items=("result.nodes.item",), keep_items=False)
    items = read(reader, chunks)
    assert read(counter, chunks) == []
    assert reader.item_count == counter.item_count == len(items)
    return [items, reader.first("result.count")]


def _expect_items(value: Any) -> Any:
    return [_array(_member(value, "result", "nodes")), _member(value, "result", "count")]


def _run_top_items(chunks: Iterable[bytes]) -> Any:
    return read(PathReader(WHERE, items=("item",)), chunks)


def _run_rows(chunks: Iterable[bytes]) -> Any:
    chunks = list(chunks)
    reader, counter = rows_reader(), PathReader(WHERE, rows="values", keep_items=False)
    rows = read(reader, chunks)
    assert read(counter, chunks) == []
    assert reader.item_count == counter.item_count == len(rows)
    return [rows, reader.first("id"), reader.first("columns")]


def _run_counted_rows(chunks: Iterable[bytes]) -> Any:
    """Rows only counted (a native result), by a reader of its own: it must refuse by itself what
    the reader that keeps them refuses."""
    counter = rows_reader()
    counter.keep_items = False
    assert read(counter, chunks) == []
    return [counter.item_count, counter.first("id"), counter.first("columns")]


def _expect_counted_rows(value: Any) -> Any:
    rows, *rest = _expect_rows(value)
    return [len(rows), *rest]


def _expect_rows(value: Any) -> Any:
    if not isinstance(value, dict):
        raise Shape("not an object")
    return [_rows_of(value.get("values")), value.get("id"), value.get("columns")]


def _run_esql(chunks: Iterable[bytes]) -> Any:
    reader = esql_answer.reader(WHERE, keep_rows=True)
    rows = read(reader, chunks)
    return [rows, *(reader.first(name) for name in ("id", "is_running", "is_partial", "columns"))]


def _expect_esql(value: Any) -> Any:
    if not isinstance(value, dict):
        raise Shape("not an object")
    if isinstance(value.get("values"), list):
        before = list(value)[: list(value).index("values")]
        if "columns" not in before or value["columns"] is None:
            raise Shape("'values' before 'columns'")
    fields = [value.get(name) for name in ("id", "is_running", "is_partial", "columns")]
    return [_rows_of(value.get("values")), *fields]


def _run_looker(chunks: Iterable[bytes]) -> Any:
    reader = looker_answer.json_reader(WHERE, "json_detail")
    return [read(reader, chunks), reader.first("errors"), reader.first("fields")]


def _expect_looker(value: Any) -> Any:
    return [_array(_member(value, "data")), _member(value, "errors"), _member(value, "fields")]


def _run_veza(chunks: Iterable[bytes]) -> Any:
    reader = veza_answer.reader(WHERE, keep_nodes=True)
    nodes = read(reader, chunks)
    return [nodes, reader.found, sorted(reader.opened), sorted(reader.closed)]


def _run_skip(chunks: Iterable[bytes]) -> Any:
    reader = PathReader(WHERE, items=("none.item",), collect=("none.x",))
    assert read(reader, chunks) == []
    assert reader.complete
    return reader.item_count


@dataclass(frozen=True)
class Reader:
    name: str
    run: Callable[[Iterable[bytes]], Any]
    # What it must read, from json.loads' value (raises Shape: it must refuse); None: no model.
    expect: Callable[[Any], Any] | None


READERS = [
    Reader("collect", _run_collect, _expect_collect),
    Reader("items", _run_items, _expect_items),
    Reader("top-level items", _run_top_items, _array),
    Reader("rows", _run_rows, _expect_rows),
    Reader("rows counted", _run_counted_rows, _expect_counted_rows),
    Reader("ArrayRows", read_array_rows, _array_of_rows),
    Reader("ArrayRows counted", count_array_rows, lambda value: len(_array_of_rows(value))),
    Reader("esql", _run_esql, _expect_esql),
    Reader("looker json_detail", _run_looker, _expect_looker),
    Reader("veza", _run_veza, None),
    Reader("skip", _run_skip, lambda value: 0),
]
BY_NAME = {reader.name: reader for reader in READERS}


def outcome(run: Callable[[Iterable[bytes]], Any], chunks: list[bytes]) -> tuple[str, str]:
    """("read", the canonical value) or ("refused", the message): any other exception escapes."""
    try:
        return "read", canonical(run(chunks))
    except UpstreamProtocolError as error:
        message = str(error)
    assert message.startswith("test read on connection 'conn': ")
    return "refused", message


def check(reader: Reader, body: bytes, chunks: list[bytes]) -> None:
    """``reader`` reads ``body`` (cut into ``chunks``) as the reference does, or refuses it where
    the reference would; it reads the same however the body is cut."""
    verdict = oracle(body)
    whole, chunked = outcome(reader.run, [body]), outcome(reader.run, chunks)
    assert chunked[0] == whole[0], f"{reader.name}: read whole {whole}, in chunks {chunked}"
    if whole[0] == "read":
        assert chunked == whole, f"{reader.name}: read whole {whole[1]}, in chunks {chunked[1]}"
    if verdict.refused is not None:
        assert whole[0] == "refused", f"{reader.name} read what is refused ({verdict.refused}): {whole[1]}"
    if not verdict.accepted or reader.expect is None:
        return
    try:
        expected = canonical(reader.expect(verdict.value))
    except Shape as shape:
        expected = f"refused: {shape}"
    if expected.startswith("refused: "):
        assert whole[0] == "refused", f"{reader.name} read {whole[1]}, not what it reads ({expected})"
        return
    if whole[0] == "refused":
        assert verdict.surrogates, f"{reader.name} refused what json.loads reads: {whole[1]}"
    else:
        assert whole[1] == expected, f"{reader.name} read {whole[1]}, json.loads {expected}"


# --- 1. valid documents: what json.loads reads ---------------------------------------------------


@NO_HANG
@MANY
@given(st.data(), st.sampled_from(sorted(SHAPES)))
def test_every_reader_reads_any_document_as_json_loads_does(data: st.DataObject, shape: str) -> None:
    body = data.draw(encoded(data.draw(SHAPES[shape], label="document")), label="body")
    assert oracle(body).accepted
    chunks = data.draw(chunkings(body), label="chunks")
    for reader in READERS:
        check(reader, body, chunks)


@MANY
@given(st.data(), named_documents())
def test_collected_values_are_what_json_loads_reads(data: st.DataObject, document: dict[str, Any]) -> None:
    body = data.draw(encoded(document), label="body")
    found = _run_collect(data.draw(chunkings(body), label="chunks"))
    assert canonical(found) == canonical(_expect_collect(json.loads(body)))


@MANY
@given(st.data(), item_documents())
def test_items_are_what_json_loads_reads(data: st.DataObject, document: dict[str, Any]) -> None:
    body = data.draw(encoded(document), label="body")
    items, count = _run_items(data.draw(chunkings(body), label="chunks"))
    loaded = json.loads(body)["result"]
    assert canonical(items) == canonical(loaded["nodes"])
    assert count == loaded["count"]


@MANY
@given(st.data(), ROWS)
def test_array_rows_are_what_json_loads_reads(data: st.DataObject, rows: list[list[Any]]) -> None:
    body = data.draw(encoded(rows), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    assert canonical(read_array_rows(chunks)) == canonical(json.loads(body))


@FEW
@given(st.data(), st.lists(st.lists(BIG_INTS, max_size=3), min_size=1, max_size=3))
def test_integers_beyond_64_bits_are_read_everywhere(data: st.DataObject, numbers: list[list[int]]) -> None:
    document = {"doc": numbers, "outer": {"doc": numbers[0][:1] or None}, "skip": numbers, "values": numbers}
    body = data.draw(encoded(document), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    assert _run_collect(chunks) == [numbers, numbers[0][:1] or None]
    assert read(PathReader(WHERE, rows="values"), chunks) == numbers
    assert read(PathReader(WHERE, items=("doc.item",)), chunks) == numbers


# --- 2. damaged documents: what json.loads reads, or a protocol error ----------------------------

_NUMBER_OR_LITERAL = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|null|true|false")
NOT_NUMBERS = [
    *(b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"1e400", b"-1E999", b"1e99999999999"),
    *(b"1.", b".5", b"01", b"-", b"+1", b"0x10", b"1e", b"1e+", b"tru", b"nul", b"True", b"None", b"--1"),
]
NOT_UTF8 = [
    *(b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xe2\x82(", b"\xf0\x9f\x98"),
    *(b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80"),
    *(b"\xf8\x88\x80\x80\x80", b"\xef\xbb\xbf"),
]
# Inside a string. A lone high surrogate escape followed by another escape: yajl would join them.
BAD_IN_STRINGS = [
    *(rb"\ud800x", rb"\udbffz", rb"\udc00", rb"\udfff", rb"\ud800\udc00", rb"\x", rb"\u12", rb"\u12g4"),
    *(rb"\ud800\u0041", rb"\udbff\ud800", rb"\ud800\ud800\udc00", rb"\\ud800\u0041", rb"\ud800\n"),
    *(rb"\'", rb"\U0041", rb"\a", b"\\", b"\x00", b"\x01", b"\x1f", b"\t", b"\n", b"\r", b'"'),
]
TRAILING = [b" {}", b"[]", b",", b"}", b"]", b"x", b"\x00", b"0", b'"', b" //", b"\n\n", b"\xff"]
PUNCTUATION = st.sampled_from([*b'[]{},:"\\ 0-e.']) | st.integers(0, 255)


@st.composite
def damaged(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` with one kind of damage done to it (some of them leave it valid)."""
    how = draw(
        st.sampled_from(["cut", "insert", "replace", "drop", "number", "trailing", "utf-8", "string"]),
        label="damage",
    )
    at = draw(st.integers(0, len(body)), label="at")
    if how == "cut":
        return body[: min(at, len(body) - 1)]
    if how == "insert":
        return body[:at] + bytes([draw(PUNCTUATION, label="byte")]) + body[at:]
    if how in ("replace", "drop") and at < len(body):
        byte = bytes([draw(PUNCTUATION, label="byte")]) if how == "replace" else b""
        return body[:at] + byte + body[at + 1 :]
    if how == "number" and (tokens := list(_NUMBER_OR_LITERAL.finditer(body))):
        token = draw(st.sampled_from(tokens), label="token")
        return body[: token.start()] + draw(st.sampled_from(NOT_NUMBERS)) + body[token.end() :]
    if how == "trailing":
        garbage = draw(st.sampled_from(TRAILING) | st.binary(min_size=1, max_size=4), label="garbage")
        return body + garbage
    if how == "string" and (quotes := [found.end() for found in re.finditer(rb'"', body)]):
        at = draw(st.sampled_from(quotes), label="after a quote")
        return body[:at] + draw(st.sampled_from(BAD_IN_STRINGS), label="bad") + body[at:]
    bad = draw(st.sampled_from(NOT_UTF8), label="not UTF-8")
    if how == "string" and (quotes := [found.end() for found in re.finditer(rb'"', body)]):
        at = draw(st.sampled_from(quotes), label="after a quote")
    return body[:at] + bad + body[at:]


@NO_HANG
@_settings(150)
@given(st.data(), st.sampled_from(sorted(SHAPES)))
def test_a_damaged_document_is_read_as_json_loads_reads_it_or_refused(
    data: st.DataObject, shape: str
) -> None:
    body = data.draw(encoded(data.draw(SHAPES[shape], label="document")), label="body")
    body = data.draw(damaged(body), label="damaged")
    chunks = data.draw(chunkings(body), label="chunks")
    for reader in READERS:
        check(reader, body, chunks)


@NO_HANG
@SOME
@given(st.data(), st.binary(max_size=60), st.sampled_from([b"", b"[", b'{"values": [', b'{"doc": "']))
def test_any_bytes_are_read_as_json_loads_reads_them_or_refused(
    data: st.DataObject, noise: bytes, start: bytes
) -> None:
    body = start + noise
    chunks = data.draw(chunkings(body), label="chunks")
    for reader in READERS:
        check(reader, body, chunks)


@pytest.mark.parametrize(
    "body",
    [
        *(b"NaN", b"[Infinity]", b'{"doc": -Infinity}', b'{"values": [[NaN]]}', b'{"doc": 1e400}'),
        *(b'{"values": [[1], [-1e400]]}', b'{"skip": [1e400]}', b'{"result": {"nodes": [NaN]}}'),
    ],
)
def test_nan_infinity_and_overflow_are_refused_where_json_loads_reads_them(body: bytes) -> None:
    json.loads(body)  # the json module reads them (as nan, inf)
    for reader in READERS:
        assert outcome(reader.run, [body])[0] == "refused", reader.name


@pytest.mark.parametrize(
    "body",
    [b'\xef\xbb\xbf{"doc": 1}', '{"doc": "é"}'.encode("utf-16"), '["x"]'.encode("utf-32-le")],
    ids=["utf-8 BOM", "utf-16", "utf-32"],
)
def test_only_utf8_without_a_bom_is_read(body: bytes) -> None:
    """json.loads(bytes) drops a UTF-8 BOM and reads UTF-16 and UTF-32; an answer is UTF-8 (RFC 8259)."""
    json.loads(body)
    for reader in READERS:
        assert outcome(reader.run, [body])[0] == "refused", reader.name


# --- 3. rows of every shape ----------------------------------------------------------------------

ROW_EXAMPLES: list[list[list[Any]]] = [
    [],
    [[]],
    [[], [], []],
    [[[]]],
    [[{}]],
    [[[], {}], [[[]]]],
    [["],["], ["[", "]"], [["],["]]],
    [[1], [], [2, [3, [4]]], [{"a": [[5], [6]]}]],
    [[2**64, -(2**70), 1e300, -0.0, None, True, "\U0001f600"]],
]


@FEW
@example(rows=ROW_EXAMPLES[0], indent=None).via("the empty values")
@example(rows=ROW_EXAMPLES[1], indent=None).via("one empty row")
@example(rows=ROW_EXAMPLES[2], indent=2).via("empty rows")
@example(rows=ROW_EXAMPLES[3], indent=None).via("an empty nested array")
@example(rows=ROW_EXAMPLES[4], indent=None).via("an empty object")
@example(rows=ROW_EXAMPLES[5], indent=None).via("nested empties")
@example(rows=ROW_EXAMPLES[6], indent=None).via("brackets in strings")
@example(rows=ROW_EXAMPLES[7], indent=1).via("mixed widths and nesting")
@example(rows=ROW_EXAMPLES[8], indent=None).via("big and special numbers")
@given(rows=SMALL_ROWS, indent=st.sampled_from([None, 0, 2]))
def test_rows_of_every_shape_split_at_every_byte_are_json_loads_rows(
    rows: list[list[Any]], indent: int | None
) -> None:
    document = {"id": "x", "columns": [], "values": rows, "after": [[1], [2]]}
    body = json.dumps(document, indent=indent, ensure_ascii=False, separators=(",", ":")).encode()
    array = json.dumps(rows, indent=indent, ensure_ascii=False, separators=(",", ":")).encode()
    expected = canonical(json.loads(body)["values"])
    for at in range(len(body) + 1):
        assert (
            canonical(read(esql_answer.reader(WHERE, keep_rows=True), [body[:at], body[at:]])) == expected
        ), at
    for at in range(len(array) + 1):
        assert canonical(read_array_rows([array[:at], array[at:]])) == expected, at


@SOME
@given(st.data(), ROWS)
def test_rows_of_every_shape_cut_three_ways_are_json_loads_rows(
    data: st.DataObject, rows: list[list[Any]]
) -> None:
    body = data.draw(encoded({"values": rows}), label="body")
    first = data.draw(st.integers(0, len(body)), label="first cut")
    second = data.draw(st.integers(first, len(body)), label="second cut")
    chunks = [body[:first], body[first:second], body[second:]]
    assert canonical(read(rows_reader(), chunks)) == canonical(json.loads(body)["values"])


# --- 4. delimited records against the csv module ------------------------------------------------

CSV_PIECES = st.sampled_from(["a", "b", "1", "é", "\U0001f600", " ", ",", ";", "\t", '"', "\n", "\r", "\r\n"])
CSV_FIELDS = st.lists(CSV_PIECES, max_size=6).map("".join)
DELIMITERS = st.sampled_from([",", "\t", ";"])


@dataclass(frozen=True)
class Records:
    header: list[str]
    rows: list[list[str]]
    refused: bool  # after ``rows``


def csv_reference(body: bytes, delimiter: str, newline: str = "") -> Records:
    """What the csv module reads (a header, then rows of as many values; a blank line is no row
    unless there is one column) from the body as one UTF-8 text. ``newline=""`` (as the csv
    module's docs ask) cuts lines as DelimitedRecords does; ``newline="\\n"`` at "\\n" only."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Records([], [], refused=True)
    records = csv.reader(io.StringIO(text, newline=newline), delimiter=delimiter)
    header: list[str] = []
    rows: list[list[str]] = []
    try:
        header = next(records, [])
        for record in records:
            row = record or ([""] if len(header) == 1 else None)
            if row is None:
                continue
            if len(row) != len(header):
                return Records(header, rows, refused=True)
            rows.append(row)
    except csv.Error:
        return Records(header, rows, refused=True)
    return Records(header, rows, refused=False)


def read_records(chunks: list[bytes], delimiter: str) -> Records:
    records = DelimitedRecords(iter(chunks), WHERE, delimiter=delimiter, keep_bytes=False)
    header: list[str] = []
    rows: list[list[str]] = []
    try:
        header = records.read_header()
        for row in records.rows():
            rows.append(row)
    except UpstreamProtocolError:
        return Records(header, rows, refused=True)
    assert records.item_count == len(rows)
    return Records(header, rows, refused=False)


@st.composite
def csv_bodies(
    draw: st.DrawFn, delimiters: st.SearchStrategy[str] = DELIMITERS
) -> tuple[str, list[list[str]], bytes]:
    """(delimiter, records, body) as csv.writer writes them, in any of its ways."""
    delimiter = draw(delimiters, label="delimiter")
    width = draw(st.integers(1, 4), label="width")
    records = draw(st.lists(st.lists(CSV_FIELDS, min_size=width, max_size=width), min_size=1, max_size=8))
    text = io.StringIO()
    writer = csv.writer(
        text,
        delimiter=delimiter,
        lineterminator=draw(st.sampled_from(["\r\n", "\n"]), label="line end"),
        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]), label="quoting"),
    )
    writer.writerows(records)
    written = text.getvalue()
    if draw(st.booleans(), label="no last line end"):
        written = written.removesuffix("\n").removesuffix("\r")
    bom = "\ufeff" if draw(st.booleans(), label="BOM") else ""
    return delimiter, records, (bom + written).encode()


@MANY
@given(st.data(), csv_bodies())
def test_delimited_records_are_what_the_csv_module_reads(
    data: st.DataObject, written: tuple[str, list[list[str]], bytes]
) -> None:
    delimiter, records, body = written
    chunks = data.draw(chunkings(body), label="chunks")
    expected = csv_reference(body, delimiter, newline="")
    assert expected == Records(records[0], records[1:], refused=False)
    assert read_records(chunks, delimiter) == expected
    counted = DelimitedRecords(iter(chunks), WHERE, delimiter=delimiter, keep_bytes=True)
    counted.read_header()
    assert b"".join(counted.native_chunks()) == body
    assert counted.item_count == len(records) - 1


@MANY
@given(st.data(), csv_bodies(), st.integers(1, 6))
def test_a_record_of_the_wrong_width_is_a_protocol_error(
    data: st.DataObject, written: tuple[str, list[list[str]], bytes], wrong: int
) -> None:
    delimiter, records, _ = written
    header, rows = records[0], records[1:]
    if wrong == len(header):
        wrong += 1
    at = data.draw(st.integers(0, len(rows)), label="at")
    bad = data.draw(st.lists(CSV_FIELDS, min_size=wrong, max_size=wrong), label="bad record")
    text = io.StringIO()
    csv.writer(text, delimiter=delimiter).writerows([header, *rows[:at], bad, *rows[at:]])
    chunks = data.draw(chunkings(text.getvalue().encode()), label="chunks")
    assert read_records(chunks, delimiter) == Records(header, rows[:at], refused=True)


CSV_NOISE = st.lists(st.sampled_from(["a", "é", ",", '"', " ", "\n", "\r", "\r\n", "\x00", ";"]), max_size=30)


@NO_HANG
@MANY
@given(
    st.data(), CSV_NOISE.map("".join), DELIMITERS, st.sampled_from([b"", b"\xff", b"\xc3", b"\xed\xa0\x80"])
)
def test_any_text_is_read_as_the_csv_module_reads_it_or_refused(
    data: st.DataObject, text: str, delimiter: str, bad: bytes
) -> None:
    body = text.encode()
    at = data.draw(st.integers(0, len(body)), label="bad at")
    body = body[:at] + bad + body[at:]
    chunks = data.draw(chunkings(body), label="chunks")
    got = read_records(chunks, delimiter)
    reference = csv_reference(body, delimiter, newline="")
    if bad:
        assert got.refused
    else:
        assert got == reference


# --- 5. the providers' readers: the same rows however the answer is cut -------------------------


def _esql_result(chunks: list[bytes], output_format: str) -> Any:
    reader = esql_answer.reader(WHERE, keep_rows=output_format != "native")
    streamed = StreamedAnswer(httpx.Response(200, stream=Chunks(chunks)), reader, WHERE)
    found = esql_answer.result(streamed, "native" if output_format == "native" else "jsonl", "t1", True)
    columns = [(column.name, column.type) for column in found.columns]
    if isinstance(found, NativeResult):
        assert b"".join(found.chunks) == b"".join(chunks)
        return [columns, found.row_count, found.partial()]
    assert isinstance(found, TabularResult)
    return [columns, [list(row) for row in found.rows], found.partial()]


@SOME
@given(st.data(), esql_answers(), st.sampled_from(["jsonl", "native"]))
def test_esql_answers_read_the_same_however_cut(
    data: st.DataObject, document: dict[str, Any], output_format: str
) -> None:
    body = data.draw(encoded(document), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    whole = outcome(lambda chunks: _esql_result(list(chunks), output_format), [body])
    assert outcome(lambda chunks: _esql_result(list(chunks), output_format), chunks) == whole
    loaded = json.loads(body)
    if list(loaded).index("columns") < list(loaded).index("values"):
        rows: Any = loaded["values"] if output_format == "jsonl" else len(loaded["values"])
        columns = [[column["name"], column["type"]] for column in loaded["columns"]]
        assert whole == ("read", canonical([columns, rows, loaded.get("is_partial", False)]))
    else:
        assert whole[0] == "refused"
        assert "'values' arrived before 'columns'" in whole[1]


def _looker_result(chunks: list[bytes], result_format: str, native: bool) -> Any:
    response = httpx.Response(200, stream=Chunks(chunks))
    found = looker_answer.result(response, WHERE, result_format, native, None)
    columns = [(column.name, column.type) for column in found.columns]
    if isinstance(found, NativeResult):
        assert b"".join(found.chunks) == b"".join(chunks)
        return [columns, found.row_count]
    return [columns, [list(row) for row in found.rows]]


@st.composite
def looker_bodies(draw: st.DrawFn) -> tuple[str, Any, bytes]:
    """(result format, the document or records, body)."""
    result_format = draw(st.sampled_from(["json", "json_detail", "json_bi", "csv"]), label="format")
    if result_format == "csv":
        _, records, body = draw(csv_bodies(st.just(",")))
        return result_format, records, body
    result = draw(looker_results())
    if result_format == "json":
        document: Any = [
            {name: looker_answer.cell_value(cell) for name, cell in row.items()} for row in result["data"]
        ]
    elif result_format == "json_bi":
        document = _shuffled(draw, {"rows": result["data"], "metadata": result["fields"]})
    else:  # "fields", then "data": see test_looker_json_detail_columns_are_the_same_however_cut
        document = {"fields": result.pop("fields"), "data": result.pop("data"), **result}
    return result_format, document, draw(encoded(document, sort_keys=False), label="body")


@SOME
@given(st.data(), looker_bodies(), st.booleans())
def test_looker_results_read_the_same_however_cut(
    data: st.DataObject, looker: tuple[str, Any, bytes], native: bool
) -> None:
    result_format, _, body = looker
    chunks = data.draw(chunkings(body), label="chunks")
    whole = outcome(lambda chunks: _looker_result(list(chunks), result_format, native), [body])
    assert outcome(lambda chunks: _looker_result(list(chunks), result_format, native), chunks) == whole
    if result_format != "csv":
        loaded = json.loads(body)
        rows = loaded if result_format == "json" else loaded["rows" if result_format == "json_bi" else "data"]
        names = list(rows[0]) if rows else []
        expected = (
            len(rows) if native else [[looker_answer.cell_value(row[name]) for name in names] for row in rows]
        )
        assert whole[0] == "read"
        assert canonical(json.loads(whole[1])[1]) == canonical(expected)


def _veza_page(chunks: Iterable[bytes]) -> Any:
    reader = veza_answer.reader(WHERE, keep_nodes=True)
    nodes = read(reader, chunks)
    rows = [veza_answer.node_row(node) for node in nodes]
    facts = [veza_answer.task_id(reader), veza_answer.state(reader), veza_answer.outcome(reader)]
    return [nodes, rows, facts, veza_answer.kind(reader), veza_answer.continuation(reader)]


@SOME
@given(st.data(), veza_pages())
def test_veza_pages_read_the_same_however_cut(data: st.DataObject, document: dict[str, Any]) -> None:
    body = data.draw(encoded(document), label="body")
    whole = outcome(_veza_page, [body])
    assert outcome(_veza_page, data.draw(chunkings(body), label="chunks")) == whole
    task = json.loads(body).get("task", json.loads(body))
    page = task["result"].get("nodes_value", task["result"].get("nodesValue"))
    nodes = page if isinstance(page, list) else page["values"]
    more = isinstance(page, dict) and page.get("has_more", page.get("hasMore"))
    token = page.get("next_page_token", page.get("nextPageToken")) if isinstance(page, dict) else None
    if more and not token:
        assert whole[0] == "refused"
        assert "has_more but gives no next_page_token" in whole[1]
        return
    assert whole[0] == "read"
    read_nodes, _, facts, kind, continuation = json.loads(whole[1])
    assert canonical(read_nodes) == canonical(nodes)
    assert facts == [task["id"], "COMPLETE", "succeeded"]
    assert kind == "nodes"
    assert continuation == (token if more else None)


# --- differences found (issue 13), each fixed: they keep what was wrong from coming back --------


@FEW
@example(follower=0x41).via("a plain letter")
@example(follower=0xD800).via("a second high surrogate")
@given(follower=st.integers(0, 0xFFFF).filter(lambda code: not 0xDC00 <= code <= 0xDFFF))
def test_a_lone_high_surrogate_before_another_escape_reads_as_a_question_mark(follower: int) -> None:
    body = b'{"doc": "\\ud800\\u%04x", "values": [["\\ud800\\u%04x"]]}' % (follower, follower)
    expected = _question_marks(json.loads(body)["doc"])
    reader = PathReader(WHERE, collect=("doc",), rows="values")
    rows = read(reader, [body])
    assert rows == [[expected]]  # the rows read it so
    assert reader.first("doc") == expected


@FEW
@example(document=1).via("a scalar")
@example(document=[1]).via("an array")
@given(document=VALUES)
def test_the_whole_document_can_be_collected(document: Any) -> None:
    body = json.dumps(document).encode()
    reader = PathReader(WHERE, collect=("",))
    read(reader, [body])
    assert canonical(reader.first("")) == canonical(json.loads(body))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("result.nodes.item", b'{"result": {"nodes": {"item": 5}}}'),
        ("result.nodes.item", b'{"result": {"nodes": {"item": [1], "x": 2}}}'),
        ("result.nodes.item", b'{"result.nodes": [5]}'),
        ("result.nodes.item", b'{"result": {"nodes.item": 5}}'),
        ("item", b'{"": [5]}'),
    ],
)
def test_a_path_names_one_place_only(path: str, body: bytes) -> None:
    assert read(PathReader(WHERE, items=(path,)), [body]) == []


@pytest.mark.parametrize("reader", ["rows", "ArrayRows"])
def test_a_row_nesting_deeper_than_the_cap_is_a_protocol_error(reader: str) -> None:
    """Rows are held to MAX_NESTING as any other part of an answer is (the json module would decode
    a row nesting thousands of levels, up to its recursion limit)."""
    deep = b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1)
    body = b'{"values": [[1], ' + deep + b"]}" if reader == "rows" else b"[[1], " + deep + b"]"
    with pytest.raises(UpstreamProtocolError, match=f"deeper than {MAX_NESTING}"):
        BY_NAME[reader].run([body])


@FEW
@example(
    document={"values": [[1]], "columns": [{"name": "a", "type": "long"}]},
    cut=len(b'{"values": ['),
).via("cut inside the values")
@given(document=esql_answers(), cut=st.integers(0, 10_000))
def test_a_native_esql_answer_with_values_first_is_read_however_cut(
    document: dict[str, Any], cut: int
) -> None:
    document = _in_order(document, "values", "columns")
    body = json.dumps(document).encode()
    cut = min(cut, len(body))
    whole = outcome(lambda chunks: _esql_result(list(chunks), "native"), [body])
    assert outcome(lambda chunks: _esql_result(list(chunks), "native"), [body[:cut], body[cut:]]) == whole
    assert whole[0] == "refused"  # as in every format: ES writes the columns first
    assert "'values' arrived before 'columns'" in whole[1]


def _json_detail_result(chunks: Iterable[bytes]) -> Any:
    return _looker_result(list(chunks), "json_detail", False)


def _any_order(result: dict[str, Any]) -> bytes:
    return json.dumps(result).encode()


def _fields_last(result: dict[str, Any]) -> bytes:
    fields = result.pop("fields")
    return json.dumps({**result, "fields": fields}).encode()


@FEW
@example(
    body=b'{"data": [{"a": {"value": 1}}], "fields": {"measures": [{"name": "a", "type": "count"}]}}',
    cut=len(b'{"data": [{"a": {"value": 1}}'),
).via("cut after the first row")
@example(
    body=b'{"errors": [{"level": "warning", "message": "w"}], "data": [], '
    b'"fields": {"dimensions": [{"name": "a", "type": "string"}]}}',
    cut=len(b'{"errors": [{"level": "warning", "message": "w"}]'),
).via("cut after the errors")
@example(
    body=b'{"fields": {"dimensions": [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}]}, '
    b'"errors": [{"level": "warning", "message": "w"}], "data": [{"b": {"value": 1}, "a": {"value": 2}}]}',
    cut=len(
        b'{"fields": {"dimensions": [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}]}, '
        b'"errors": [{"level": "warning", "message": "w"}]'
    ),
).via("cut after the errors, the fields in another order than the row")
@given(
    body=st.one_of(looker_results().map(_fields_last), looker_results().map(_any_order)),
    cut=st.integers(0, 10_000),
)
def test_looker_json_detail_columns_are_the_same_however_cut(body: bytes, cut: int) -> None:
    """The columns are decided at the first row from what comes before it in the document: its keys
    typed by the metadata if "fields" came before "data", else from its values; with no rows, the
    metadata's (see the module doc of looker.answer)."""
    cut = min(cut, len(body))
    whole = outcome(_json_detail_result, [body])
    assert outcome(_json_detail_result, [body[:cut], body[cut:]]) == whole
    assert whole[0] == "read"
    loaded = json.loads(body)
    fields = [field for group in loaded["fields"].values() for field in group]
    metadata = {field["name"]: field["type"] or "unknown" for field in fields}
    if not loaded["data"]:
        expected: Any = [[name, kind] for name, kind in metadata.items()]
    elif list(loaded).index("fields") < list(loaded).index("data"):
        expected = [[name, metadata[name]] for name in loaded["data"][0]]
    else:  # typed from the first row's values, as if there were no metadata
        expected = _json_detail_result([json.dumps({"data": loaded["data"][:1]}).encode()])[0]
    assert json.loads(whole[1])[0] == [list(column) for column in expected]


# DelimitedRecords once cut lines at '\n' only: a blank line ended by a lone '\r' after a record
# was dropped silently (one-column "a\r\r" read as a header and no rows, not the row [""])
@FEW
@example(text="a\r\r", delimiter=",").via("a blank line ended by a lone CR, one column")
@given(text=CSV_NOISE.map("".join), delimiter=DELIMITERS)
def test_a_lone_cr_line_end_is_read_as_the_csv_module_reads_it_or_refused(text: str, delimiter: str) -> None:
    got = read_records([text.encode()], delimiter)
    assert got.refused or got == csv_reference(text.encode(), delimiter, newline="")


# yajl reports trailing text only once it is a whole token; PathReader checks the last byte
@FEW
@example(document={}, garbage="").via("a lone quote")
@example(document=None, garbage="abc").via("after a scalar")
@given(document=VALUES, garbage=st.text(st.characters(codec="ascii", exclude_characters='"\\'), max_size=5))
def test_a_document_followed_by_an_unterminated_string_is_refused(document: Any, garbage: str) -> None:
    body = (json.dumps(document) + ' "' + garbage).encode()
    with pytest.raises(ValueError, match="Extra data"):
        json.loads(body)
    for reader in READERS:
        assert outcome(reader.run, [body])[0] == "refused", reader.name


# yajl takes a vertical tab and a form feed for blanks between tokens; PathReader refuses them
@FEW
@example(document=None, blank="\x0b").via("before a scalar")
@example(document={"doc": 1}, blank="\x0c").via("between tokens")
@given(document=VALUES, blank=st.sampled_from(["\x0b", "\x0c"]))
def test_only_json_whitespace_separates_tokens(document: Any, blank: str) -> None:
    body = (blank + _spaced(document, itertools.cycle([blank]), True)).encode()
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(body)
    for reader in READERS:
        assert outcome(reader.run, [body])[0] == "refused", reader.name
