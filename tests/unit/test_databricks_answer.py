"""What Databricks' answers mean, without HTTP: JSON_ARRAY values typed by the manifest's column
types (every value arrives as text), the manifest's checks, chunk bodies and their row counts,
statement states, external links, the wait_timeout mapping and the error envelopes. Whatever a
manifest and its values hold, they are typed or refused with an UpstreamProtocolError, never another
exception (a property test)."""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query_relay.exceptions import UpstreamProtocolError, UpstreamQueryFailed, UpstreamTaskExpired
from query_relay.providers.databricks import answer
from query_relay.providers.databricks.answer import Statement, Status
from query_relay.upstream.errors import Where

WHERE = Where("databricks", "lakehouse", "databricks fetch")


def manifest_of(*columns: dict[str, Any], **fields: Any) -> answer.Manifest:
    return answer.manifest({"format": "JSON_ARRAY", "schema": {"columns": list(columns)}, **fields}, WHERE)


def typed(column: dict[str, Any], *values: Any) -> list[Any]:
    found = manifest_of({"name": "c", **column})
    return [row[0] for row in answer.typed_rows(found, WHERE)(iter([[value] for value in values]))]


# --- types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "text", "value"),
    [
        ({"type_name": "LONG", "type_text": "BIGINT"}, "-9223372036854775808", -(2**63)),
        ({"type_name": "INT", "type_text": "INT"}, "42", 42),
        ({"type_name": "SHORT", "type_text": "SMALLINT"}, "-7", -7),
        ({"type_name": "BYTE", "type_text": "TINYINT"}, "127", 127),
        ({"type_text": "BIGINT"}, "5", 5),  # no type_name: read from type_text
        (
            {"type_name": "DECIMAL", "type_text": "DECIMAL(12,4)", "type_precision": 12, "type_scale": 4},
            "-98765432.1000",
            -98765432.1,
        ),
        ({"type_name": "DECIMAL", "type_text": "DECIMAL(10,2)"}, "0.05", 0.05),  # precision from the text
        (
            {"type_name": "DECIMAL", "type_text": "DECIMAL(20,0)"},
            "12345678901234567890",
            12345678901234567890,
        ),
        (
            {"type_name": "DECIMAL", "type_text": "DECIMAL(38,10)", "type_precision": 38, "type_scale": 10},
            "1234567890123456789.0123456789",
            "1234567890123456789.0123456789",
        ),
        ({"type_name": "DECIMAL", "type_text": "DECIMAL"}, "10", 10),  # DECIMAL is DECIMAL(10,0)
        ({"type_name": "DOUBLE", "type_text": "DOUBLE"}, "-1.23E-4", -0.000123),
        ({"type_name": "FLOAT", "type_text": "FLOAT"}, "1.5", 1.5),
        ({"type_name": "BOOLEAN", "type_text": "BOOLEAN"}, "true", True),
        ({"type_name": "BOOLEAN", "type_text": "BOOLEAN"}, "false", False),
        ({"type_name": "STRING", "type_text": "STRING"}, 'héllo, "world"\n', 'héllo, "world"\n'),
        ({"type_name": "DATE", "type_text": "DATE"}, "1969-07-20", "1969-07-20"),
        (
            {"type_name": "TIMESTAMP", "type_text": "TIMESTAMP"},
            "2024-05-06T10:34:56.500Z",
            "2024-05-06T10:34:56.500Z",
        ),
        ({"type_text": "TIMESTAMP_NTZ"}, "2024-05-06T12:34:56.123456", "2024-05-06T12:34:56.123456"),
        (
            {"type_name": "TIMESTAMP_NTZ", "type_text": "TIMESTAMP_NTZ"},
            "1969-12-31T23:59:58.500",
            "1969-12-31T23:59:58.500",
        ),
        ({"type_name": "BINARY", "type_text": "BINARY"}, "0001FEFF", "0001FEFF"),
        (
            {"type_name": "INTERVAL", "type_text": "INTERVAL DAY TO SECOND"},
            "1 02:03:04.000000000",
            "1 02:03:04.000000000",
        ),
        ({"type_name": "ARRAY", "type_text": "ARRAY<INT>"}, "[1,2,null]", [1, 2, None]),
        (
            {"type_name": "STRUCT", "type_text": "STRUCT<a: INT, b: STRING>"},
            '{"a":1,"b":"x"}',
            {"a": 1, "b": "x"},
        ),
        ({"type_name": "MAP", "type_text": "MAP<STRING, DOUBLE>"}, '{"k":2.5}', {"k": 2.5}),
        ({"type_text": "ARRAY<STRUCT<a: INT>>"}, '[{"a":1}]', [{"a": 1}]),
        ({"type_name": "VARIANT", "type_text": "VARIANT"}, '{"v":1}', '{"v":1}'),  # not a type this maps
        ({"type_name": "USER_DEFINED_TYPE", "type_text": "GEOMETRY"}, "POINT (1 2)", "POINT (1 2)"),
    ],
)
def test_each_type_is_read_from_its_text(column: dict[str, Any], text: str, value: Any) -> None:
    assert typed(column, text) == [value]


def test_null_stays_null_whatever_the_type() -> None:
    for kind in ("LONG", "DECIMAL", "DOUBLE", "BOOLEAN", "STRING", "ARRAY", "TIMESTAMP"):
        assert typed({"type_name": kind, "type_text": kind}, None) == [None]


def test_java_spellings_of_nan_and_the_infinities_are_floats() -> None:
    nan, inf, minus_inf = typed(
        {"type_name": "DOUBLE", "type_text": "DOUBLE"}, "NaN", "Infinity", "-Infinity"
    )
    assert math.isnan(nan)
    assert (inf, minus_inf) == (math.inf, -math.inf)


@pytest.mark.parametrize(
    ("column", "text"),
    [
        ({"type_name": "LONG", "type_text": "BIGINT"}, "4.5"),
        ({"type_name": "INT", "type_text": "INT"}, "1_000"),
        ({"type_name": "DECIMAL", "type_text": "DECIMAL(10,2)"}, "NaN"),
        ({"type_name": "DECIMAL", "type_text": "DECIMAL(38,2)"}, "Infinity"),
        ({"type_name": "DOUBLE", "type_text": "DOUBLE"}, "one"),
        ({"type_name": "BOOLEAN", "type_text": "BOOLEAN"}, "yes"),
        ({"type_name": "ARRAY", "type_text": "ARRAY<INT>"}, "[1,"),
    ],
)
def test_a_value_its_type_does_not_read_is_a_protocol_error_naming_row_and_column(
    column: dict[str, Any], text: str
) -> None:
    with pytest.raises(
        UpstreamProtocolError, match=r"row 2, column 'c': a value its type does not read"
    ) as raised:
        typed(column, None, text)
    assert text not in str(raised.value)


def test_a_value_that_is_not_text_is_refused() -> None:
    with pytest.raises(UpstreamProtocolError, match=r"row 1, column 'c': a int, not text"):
        typed({"type_name": "LONG", "type_text": "BIGINT"}, 5)
    with pytest.raises(UpstreamProtocolError, match=r"row 2, column 'c': a list, not text"):
        typed({"type_name": "STRING", "type_text": "STRING"}, "a", ["b"])


# --- the manifest ----------------------------------------------------------------------------------


def test_the_manifest_gives_columns_typed_by_type_text_and_the_rows_of_each_chunk() -> None:
    found = manifest_of(
        {"name": "id", "type_name": "LONG", "type_text": "BIGINT"},
        {"name": "at", "type_text": "TIMESTAMP_NTZ"},
        total_chunk_count=2,
        total_row_count=3,
        chunks=[{"chunk_index": 0, "row_count": 2}, {"chunk_index": 1, "row_count": 1, "byte_count": 9}],
        truncated=False,
    )
    assert [(column.name, column.type) for column in answer.columns(found)] == [
        ("id", "BIGINT"),
        ("at", "TIMESTAMP_NTZ"),
    ]
    assert (found.chunk_count, found.chunk_rows(0), found.chunk_rows(1)) == (2, 2, 1)
    assert manifest_of(total_chunk_count=0).chunk_count == 0
    assert manifest_of(total_chunk_count=1).chunk_rows(0) is None  # no chunks listed: the link's count


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (None, "has no 'manifest'"),
        ({"format": "CSV", "schema": {"columns": []}}, "not in the JSON_ARRAY format"),
        ({"schema": {"columns": [{"name": "x"}]}}, "neither type_text nor type_name"),
        ({"schema": {"columns": [{"type_text": "INT"}]}}, r"'manifest' is not understood \(1 problems\)"),
        ({"total_chunk_count": -1}, "not understood"),
        (
            {"schema": {"columns": [{"name": "d", "type_text": "DECIMAL", "type_scale": -2}]}},
            "not understood",
        ),
        ({"total_chunk_count": 2, "chunks": [{"chunk_index": 1, "row_count": 1}]}, "does not list chunks"),
        ({"truncated": "maybe"}, "not understood"),
    ],
)
def test_a_manifest_that_is_not_understood_is_a_protocol_error(document: Any, problem: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=problem):
        answer.manifest(document, WHERE)


TYPE_NAMES = (
    "LONG", "INT", "SHORT", "BYTE", "DECIMAL", "DOUBLE", "FLOAT", "BOOLEAN", "STRING", "DATE", "TIMESTAMP",
    "TIMESTAMP_NTZ", "BINARY", "INTERVAL", "ARRAY", "STRUCT", "MAP", "NULL",
)  # fmt: skip
COLUMN_TYPES = st.fixed_dictionaries(
    {"name": st.text(max_size=5)},
    optional={
        "type_name": st.none() | st.sampled_from(TYPE_NAMES) | st.text(max_size=8),
        "type_text": st.none()
        | st.from_regex(r"(BIGINT|INT|DECIMAL|DEC|NUMERIC|ARRAY<INT>|STRING)(\([0-9]{1,3}(,[0-9]{1,3})?\))?")
        | st.text(max_size=12),
        "type_precision": st.none() | st.integers(-5, 60),
        "type_scale": st.none() | st.integers(-3, 60),
    },
)
SCALARS = st.one_of(st.none(), st.text(max_size=30), st.integers(), st.floats(), st.booleans())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
NUMERIC_TEXT = st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{0,12})?(E-?[0-9]{1,3})?", fullmatch=True)
WORDS = st.sampled_from(["true", "false", "NaN", "Infinity", "-Infinity", "[1,2]", '{"a":', "null"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(COLUMN_TYPES, min_size=1, max_size=3),
    st.lists(st.lists(st.one_of(VALUES, NUMERIC_TEXT, WORDS), min_size=0, max_size=4), max_size=4),
    st.one_of(st.none(), st.integers(-2, 5)),
)
def test_any_manifest_and_values_are_typed_or_refused_by_name(
    columns: list[dict[str, Any]], rows: list[list[Any]], chunk_count: int | None
) -> None:
    document: dict[str, Any] = {"format": "JSON_ARRAY", "schema": {"columns": columns}}
    if chunk_count is not None:
        document["total_chunk_count"] = chunk_count
    with contextlib.suppress(UpstreamProtocolError):  # anything else fails the test
        found = answer.manifest(document, WHERE)
        width = len(found.schema_.columns)
        list(
            answer.typed_rows(found, WHERE)(iter([row[:width] + [None] * (width - len(row)) for row in rows]))
        )


# --- chunks and their links ------------------------------------------------------------------------


def read_chunk(body: bytes, expected: int | None) -> int:
    reader = answer.chunk_reader(WHERE, keep_rows=False)
    reader.feed(body)
    reader.finish()
    return answer.counted(reader, expected, 3)


def test_a_chunk_is_a_bare_array_of_as_many_rows_as_the_manifest_says() -> None:
    assert read_chunk(b'[["1","a"],["2",null]]', 2) == 2
    assert read_chunk(b"[]", 0) == 0
    assert read_chunk(b'[["1"]]', None) == 1  # nothing to hold it to
    with pytest.raises(UpstreamProtocolError, match="chunk 3 holds 2 rows, the manifest 3"):
        read_chunk(b'[["1"],["2"]]', 3)
    with pytest.raises(UpstreamProtocolError, match="chunk 3 is not a JSON array of rows"):
        read_chunk(b'{"data_array": []}', 0)
    with pytest.raises(UpstreamProtocolError, match="something other than rows"):
        read_chunk(b'["1","2"]', 2)
    with pytest.raises(UpstreamProtocolError, match="not valid JSON"):
        read_chunk(b'[["1"]] trailing', 1)


def link(**fields: Any) -> dict[str, Any]:
    return {"external_link": "https://bucket.s3.amazonaws.com/chunk?X-Amz-Signature=abc", **fields}


def test_links_are_keyed_by_their_chunk_and_carry_their_headers_and_expiry() -> None:
    now = datetime.now(UTC)
    found = answer.links(
        [
            link(
                chunk_index=4,
                row_count=10,
                http_headers={"x-amz-sse": "AES256"},
                expiration="2099-01-01T00:00:00Z",
            ),
            link(chunk_index=5, expiration=(now - timedelta(seconds=1)).isoformat()),
        ],
        WHERE,
        4,
        https_only=True,
    )
    assert sorted(found) == [4, 5]
    assert found[4].http_headers == {"x-amz-sse": "AES256"}
    assert not found[4].expired(now)
    assert found[5].expired(now)
    assert (
        answer.links([link()], WHERE, 7, https_only=True)[7].expiration is None
    )  # no chunk_index: the one asked for
    assert answer.links(None, WHERE, 0, https_only=True) == {}


@pytest.mark.parametrize(
    ("value", "https_only", "problem"),
    [
        ([{"external_link": "https://user:pw@bucket.example.com/x"}], False, "without userinfo"),
        ([{"external_link": "/relative/path"}], False, "absolute URL"),
        ([{"external_link": "ftp://bucket.example.com/x"}], False, "absolute URL"),
        ([{"external_link": "http://bucket.example.com/x"}], True, "not https"),
        ([link(http_headers={"h": 1})], True, "not understood"),
        ([link(expiration="soon")], True, "not understood"),
        ({"external_link": "https://x"}, True, "not understood"),
    ],
)
def test_a_link_that_could_leak_or_is_not_understood_is_refused(
    value: Any, https_only: bool, problem: str
) -> None:
    with pytest.raises(UpstreamProtocolError, match=problem):
        answer.links(value, WHERE, 0, https_only=https_only)


# --- statements, waits and errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "wait"), [(0, 0), (2, 0), (4.99, 0), (5, 5), (12.7, 12), (50, 50), (60, 50), (-1, 0)]
)
def test_the_submit_wait_becomes_a_wait_timeout_databricks_takes(seconds: float, wait: int) -> None:
    assert answer.wait_timeout(seconds) == wait


def state(name: str, **status: Any) -> Statement:
    return Statement("s-1", Status.model_validate({"state": name, **status}))


def test_statement_states_mean_running_finished_or_a_named_failure() -> None:
    assert not answer.finished(state("PENDING"), "s-1", WHERE)
    assert not answer.finished(state("RUNNING"), "s-1", WHERE)
    assert answer.finished(state("SUCCEEDED"), "s-1", WHERE)
    failed = state(
        "FAILED",
        error={"error_code": "BAD_REQUEST", "message": "[TABLE_OR_VIEW_NOT_FOUND] nope"},
        sql_state="42P01",
    )
    with pytest.raises(
        UpstreamQueryFailed, match=r"BAD_REQUEST: \[TABLE_OR_VIEW_NOT_FOUND\] nope \(SQL state 42P01\)"
    ):
        answer.finished(failed, "s-1", WHERE)
    with pytest.raises(UpstreamQueryFailed, match="no reason given"):
        answer.finished(state("FAILED"), "s-1", WHERE)
    with pytest.raises(UpstreamQueryFailed, match="canceled upstream"):
        answer.finished(state("CANCELED"), "s-1", WHERE)
    with pytest.raises(UpstreamTaskExpired, match="no longer kept"):
        answer.finished(state("CLOSED"), "s-1", WHERE)
    with pytest.raises(UpstreamProtocolError, match="unknown state 'SLEEPING'"):
        answer.finished(state("SLEEPING"), "s-1", WHERE)


def test_error_envelopes_of_the_api_the_token_endpoint_and_cloud_storage() -> None:
    api = answer.envelope(
        b'{"error_code": "INVALID_PARAMETER_VALUE", "message": "bad", "details": '
        b'[{"@type": "type.googleapis.com/google.rpc.RequestInfo", "request_id": "r-9"}]}'
    )
    assert (api.code, api.message, api.request_id) == ("INVALID_PARAMETER_VALUE", "bad", "r-9")
    assert answer.envelope(b'{"error_code": 403, "message": "Invalid access token."}').code == "403"
    oauth = answer.envelope(
        b'{"error": "invalid_client", "error_description": "Client authentication failed"}'
    )
    assert (oauth.code, oauth.message) == ("invalid_client", "Client authentication failed")
    assert answer.envelope(b"<html>502 Bad Gateway</html>") == answer.envelope(b"{}")
    storage = answer.storage_envelope(
        b'<?xml version="1.0"?>\n<Error><Code>AccessDenied</Code>'
        b"<Message>Request has expired</Message></Error>"
    )
    assert (storage.code, storage.message) == ("AccessDenied", "Request has expired")
    assert answer.storage_envelope(b"not xml").code == ""


def test_a_token_answer_gives_the_token_and_its_lifetime() -> None:
    assert answer.token({"access_token": "t", "expires_in": 120}, WHERE).expires_in == 120
    assert (
        answer.token({"access_token": "t", "expires_in": True}, WHERE).expires_in
        == answer.DEFAULT_TOKEN_SECONDS
    )
    with pytest.raises(UpstreamProtocolError, match="no access_token"):
        answer.token({"token_type": "Bearer"}, WHERE)
