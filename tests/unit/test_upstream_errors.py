"""query_relay.upstream.errors: Retry-After, bounded error bodies, transport failures named without
their URL, and raise_for_response (envelope, redaction, classifier, status classes)."""

from __future__ import annotations

import errno
import itertools
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query_relay.exceptions import (
    QueryRelayError,
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.upstream.errors import (
    ERROR_BODY_LIMIT,
    REASON_LIMIT,
    RETRY_AFTER_LONGEST_SECONDS,
    Envelope,
    ErrorAnswer,
    Where,
    first_line,
    json_object,
    parse_retry_after,
    raise_for_response,
    read_error_body,
)

WHERE = Where("esql", "es-prod", "esql poll")
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SECRET_URL = "https://elastic:hunter2@es.internal.example:9200/_query/async/abc"


class Chunks(httpx.SyncByteStream):
    """A response body that arrives in the given chunks; counts how many were pulled."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.pulled += 1
            yield chunk


def _json_envelope(body: bytes) -> Envelope:
    document = json.loads(body)
    return Envelope(document.get("code", ""), document.get("message", ""), document.get("request_id", ""))


def _raised(response: httpx.Response, **kwargs: object) -> QueryRelayError:
    with pytest.raises(QueryRelayError) as caught:
        raise_for_response(response, WHERE, **kwargs)  # type: ignore[arg-type]
    return caught.value


# --- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  7\t", 7.0),
        ("1.5", 1.5),
        ("0.25", 0.25),
        (".5", 0.5),
    ],
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_retry_after_as_an_http_date_in_the_future() -> None:
    value = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(value, now=NOW) == 90.0


def test_retry_after_as_an_http_date_with_an_offset() -> None:
    # 13:00 at +0100 is 12:00 UTC: now
    assert parse_retry_after("Sat, 01 Mar 2025 13:00:45 +0100", now=NOW) == 45.0


def test_retry_after_as_an_http_date_in_the_past_is_now() -> None:
    value = format_datetime(NOW - timedelta(hours=3), usegmt=True)
    assert parse_retry_after(value, now=NOW) == 0.0


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "-5", "1.2.3", "5s", "Someday, 99 Foo 2025", "1e3"]
)
def test_retry_after_unreadable_or_absent_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text(st.characters(max_codepoint=127), max_size=40) | st.from_regex(r"\A *[0-9.]{1,12} *\Z"))
def test_retry_after_never_raises_and_is_never_negative(value: str) -> None:
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or seconds >= 0


def test_a_429_with_a_superscript_digit_retry_after_is_rate_limited_without_a_delay() -> None:
    assert parse_retry_after("\u00b2", now=NOW) is None
    error = _raised(httpx.Response(429, headers=[(b"Retry-After", b"\xb2")]))
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after_seconds is None


# --- bodies and messages -------------------------------------------------------------------------


def test_read_error_body_stops_at_the_limit_without_reading_the_rest() -> None:
    # Given an answer far longer than any error (10 000 chunks)
    stream = Chunks(itertools.repeat(b"0123456789", 10_000))
    response = httpx.Response(500, stream=stream)

    # When its body is read as an error body
    body = read_error_body(response, limit=25)

    # Then exactly the first bytes are kept, and reading stopped there
    assert body == (b"0123456789" * 3)[:25]
    assert stream.pulled == 3


def test_read_error_body_reads_a_short_body_whole() -> None:
    response = httpx.Response(500, stream=Chunks([b'{"err', b'or": 1}']))
    assert read_error_body(response, limit=1000) == b'{"error": 1}'


def test_read_error_body_stops_at_a_limit_that_falls_on_a_chunk_end() -> None:
    stream = Chunks(itertools.repeat(b"abcd", 10_000))
    assert read_error_body(httpx.Response(500, stream=stream), limit=8) == b"abcdabcd"
    assert stream.pulled == 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": {"type": "x"}}', {"error": {"type": "x"}}),
        (b"{}", {}),
        (b"[1, 2]", None),
        (b'"text"', None),
        (b"<html>Bad Gateway</html>", None),
        (b"", None),
        (b"\xff\xfe{", None),
        (b'{"cut": ', None),
    ],
)
def test_json_object(body: bytes, expected: object) -> None:
    assert json_object(body) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ValueError("parse error: premature EOF\n     {\n  (right here) ------^\n"),
            "parse error: premature EOF",
        ),
        (ValueError("\n  leading blank line\nsecond"), "leading blank line"),
        (ValueError("one line"), "one line"),
        (ValueError(""), "ValueError"),
        (KeyError(), "KeyError"),
    ],
)
def test_first_line(error: Exception, expected: str) -> None:
    assert first_line(error) == expected


# --- Where ---------------------------------------------------------------------------------------


def test_where_reads_operation_then_connection() -> None:
    assert str(WHERE) == "esql poll on connection 'es-prod'"
    error = WHERE.protocol_error("no id")
    assert isinstance(error, UpstreamProtocolError)
    assert str(error) == "esql poll on connection 'es-prod': no id"


def _request() -> httpx.Request:
    return httpx.Request("GET", SECRET_URL)


def _connect_error(cause: OSError) -> httpx.ConnectError:
    """httpx's ConnectError as it raises one: its text quotes the URL, the OS error is its cause."""
    error = httpx.ConnectError(f"could not connect to {SECRET_URL}", request=_request())
    error.__cause__ = cause
    return error


def test_transport_turns_a_connect_error_into_unavailable_without_the_url() -> None:
    # Given a connect failure whose own text quotes the URL, caused by a refused connection
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    # When it happens inside the transport block
    with pytest.raises(UpstreamUnavailable) as caught, WHERE.transport():
        raise _connect_error(refused)

    # Then the message names the operation, the class and the OS's reason, never the URL
    message = str(caught.value)
    assert message == (
        "esql poll on connection 'es-prod': could not reach the upstream (ConnectError: connection refused)"
    )
    assert "hunter2" not in message
    assert "es.internal.example" not in message
    # and httpx's exception (with the URL) is not chained for a traceback to print
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_transport_turns_a_read_timeout_into_unavailable_without_the_url() -> None:
    with pytest.raises(UpstreamUnavailable) as caught, WHERE.transport():
        raise httpx.ReadTimeout(f"timed out reading {SECRET_URL}", request=_request())

    message = str(caught.value)
    assert message == "esql poll on connection 'es-prod': the upstream did not answer in time (ReadTimeout)"
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "error",
    [
        httpx.RemoteProtocolError(f"peer closed {SECRET_URL}"),
        httpx.ReadError(f"reset {SECRET_URL}"),
        httpx.ConnectTimeout(f"connect timeout {SECRET_URL}"),
    ],
)
def test_transport_names_other_transport_errors_by_class(error: httpx.TransportError) -> None:
    with pytest.raises(UpstreamUnavailable) as caught, WHERE.transport():
        raise error
    assert type(error).__name__ in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "es.internal.example" not in str(caught.value)


def test_transport_lets_other_errors_through() -> None:
    with pytest.raises(KeyError), WHERE.transport():
        raise KeyError("not a transport failure")
    with pytest.raises(UpstreamProtocolError), WHERE.transport():
        raise WHERE.protocol_error("a named error stays as it is")


# --- raise_for_response --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_returns_without_reading_the_body(status: int) -> None:
    stream = Chunks([b"{}"])
    raise_for_response(httpx.Response(status, stream=stream), WHERE, envelope=_json_envelope)
    assert stream.pulled == 0


def test_404_about_a_task_means_the_task_expired() -> None:
    error = _raised(httpx.Response(404), task_id="FmNJRUZ1YWZC")
    assert isinstance(error, UpstreamTaskExpired)
    assert "'FmNJRUZ1YWZC'" in str(error)
    assert str(error).startswith("esql poll on connection 'es-prod', HTTP 404: ")


def test_404_about_nothing_in_particular_is_a_protocol_error() -> None:
    error = _raised(httpx.Response(404))
    assert type(error) is UpstreamProtocolError
    assert "unexpected answer" in str(error)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth_failures(status: int) -> None:
    error = _raised(httpx.Response(status), task_id="t-1")
    assert isinstance(error, UpstreamAuthFailed)
    assert f"HTTP {status}" in str(error)


def test_429_with_retry_after_is_rate_limited_with_the_delay() -> None:
    error = _raised(httpx.Response(429, headers={"Retry-After": "12"}))
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after_seconds == 12.0
    assert "retry after 12s" in str(error)


def test_429_without_retry_after_has_no_delay() -> None:
    error = _raised(httpx.Response(429))
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after_seconds is None
    assert "retry after" not in str(error)


def test_rate_limited_falls_back_to_a_providers_default_delay() -> None:
    answer = ErrorAnswer(WHERE, 429, Envelope(), httpx.Headers())
    assert answer.rate_limited(default_seconds=30).retry_after_seconds == 30
    with_header = ErrorAnswer(WHERE, 429, Envelope(), httpx.Headers({"Retry-After": "3"}))
    assert with_header.rate_limited(default_seconds=30).retry_after_seconds == 3.0


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504, 599])
def test_408_and_5xx_are_unavailable(status: int) -> None:
    error = _raised(httpx.Response(status))
    assert isinstance(error, UpstreamUnavailable)
    assert f"HTTP {status}: the upstream is unavailable" in str(error)


def test_400_is_a_failed_query_naming_the_upstream_and_the_reason() -> None:
    response = httpx.Response(400, json={"code": "parsing_exception", "message": "line 1:5: bad"})
    error = _raised(response, envelope=_json_envelope)
    assert isinstance(error, UpstreamQueryFailed)
    assert str(error) == (
        "esql query failed: parsing_exception: line 1:5: bad [esql poll on connection 'es-prod', HTTP 400]"
    )


def test_400_without_an_envelope_names_the_status() -> None:
    error = _raised(httpx.Response(400))
    assert str(error) == "esql query failed: HTTP 400 [esql poll on connection 'es-prod', HTTP 400]"


@pytest.mark.parametrize("status", [302, 409, 418])
def test_other_statuses_are_protocol_errors(status: int) -> None:
    assert type(_raised(httpx.Response(status))) is UpstreamProtocolError


def test_a_classifier_that_names_the_failure_wins() -> None:
    # Given a provider that knows this 500 is the query's fault
    seen: list[ErrorAnswer] = []

    def classify(answer: ErrorAnswer) -> QueryRelayError | None:
        seen.append(answer)
        return (
            answer.query_failed("query hit a circuit breaker") if answer.envelope.code == "breaker" else None
        )

    response = httpx.Response(500, json={"code": "breaker", "message": "data too large"})
    error = _raised(response, envelope=_json_envelope, classify=classify, task_id="t-9")

    # Then its error is raised, and it saw the status, the envelope and the task
    assert isinstance(error, UpstreamQueryFailed)
    assert str(error).startswith("esql query hit a circuit breaker: breaker: data too large")
    assert [(answer.status, answer.envelope.code, answer.task_id) for answer in seen] == [
        (500, "breaker", "t-9")
    ]


def test_a_classifier_that_returns_none_falls_back_to_the_status_class() -> None:
    calls: list[int] = []

    def classify(answer: ErrorAnswer) -> QueryRelayError | None:
        calls.append(answer.status)
        return None

    error = _raised(httpx.Response(503), classify=classify)
    assert isinstance(error, UpstreamUnavailable)
    assert calls == [503]


def test_code_message_and_request_id_are_redacted() -> None:
    # Given an error envelope that echoes a secret in every field
    response = httpx.Response(
        401,
        json={"code": "bad SECRET", "message": "key SECRET refused", "request_id": "req-SECRET-1"},
    )

    error = _raised(response, envelope=_json_envelope, redact=lambda text: text.replace("SECRET", "***"))

    # Then no field carries it into the message
    assert "SECRET" not in str(error)
    assert str(error) == (
        "esql poll on connection 'es-prod', HTTP 401, request_id req-***-1: "
        "the upstream refused the credentials (bad ***: key *** refused)"
    )


def test_the_message_is_redacted_before_it_is_cut() -> None:
    # Given a very long message with a secret straddling the cut
    message = "x" * (REASON_LIMIT - 3) + "SECRET" + "y" * 5000
    response = httpx.Response(503, json={"message": message})
    seen: list[ErrorAnswer] = []

    def classify(answer: ErrorAnswer) -> None:
        seen.append(answer)

    error = _raised(
        response,
        envelope=_json_envelope,
        classify=classify,
        redact=lambda text: text.replace("SECRET", "***"),
    )

    # Then the message is cut to the limit, and no part of the secret is left at its end
    assert seen[0].envelope.message == "x" * (REASON_LIMIT - 3) + "***"
    assert "SEC" not in str(error)
    assert "y" not in seen[0].envelope.message


def test_code_and_request_id_are_cut() -> None:
    response = httpx.Response(503, json={"code": "c" * 1000, "request_id": "r" * 1000})
    seen: list[ErrorAnswer] = []

    def classify(answer: ErrorAnswer) -> None:
        seen.append(answer)

    _raised(response, envelope=_json_envelope, classify=classify)
    assert len(seen[0].envelope.code) == 200
    assert len(seen[0].envelope.request_id) == 200


def test_the_envelope_parser_sees_a_bounded_body() -> None:
    # Given an error answer of 10 MB
    bodies: list[bytes] = []

    def envelope(body: bytes) -> Envelope:
        bodies.append(body)
        return Envelope(message="huge")

    stream = Chunks(itertools.repeat(b"x" * 1000, 10_000))
    error = _raised(httpx.Response(502, stream=stream), envelope=envelope)

    # Then only ERROR_BODY_LIMIT bytes reach the parser
    assert isinstance(error, UpstreamUnavailable)
    assert [len(body) for body in bodies] == [ERROR_BODY_LIMIT]
    assert stream.pulled == -(-ERROR_BODY_LIMIT // 1000)  # and reading stopped there


def test_located_includes_the_request_id() -> None:
    answer = ErrorAnswer(WHERE, 503, Envelope(request_id="req-42"), httpx.Headers())
    assert answer.located == "esql poll on connection 'es-prod', HTTP 503, request_id req-42"
    assert "request_id" not in ErrorAnswer(WHERE, 503, Envelope(), httpx.Headers()).located


@pytest.mark.parametrize(
    ("envelope", "described", "suffix"),
    [
        (Envelope("code", "message"), "code: message", " (code: message)"),
        (Envelope("code", ""), "code", " (code)"),
        (Envelope("", "message"), "message", " (message)"),
        (Envelope(), "", ""),
    ],
)
def test_described_and_suffix(envelope: Envelope, described: str, suffix: str) -> None:
    answer = ErrorAnswer(WHERE, 500, envelope, httpx.Headers())
    assert (answer.described, answer.suffix) == (described, suffix)


def test_rejected_own_id_is_a_protocol_error_naming_the_task() -> None:
    answer = ErrorAnswer(WHERE, 404, Envelope(), httpx.Headers(), task_id="abc")
    error = answer.rejected_own_id()
    assert type(error) is UpstreamProtocolError
    assert "rejected its own task id 'abc'" in str(error)


@pytest.mark.parametrize("value", ["9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_an_absurd_retry_after_is_a_long_finite_wait_not_an_overflow(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == RETRY_AFTER_LONGEST_SECONDS


def test_an_error_body_nested_too_deeply_is_no_envelope() -> None:
    assert json_object(b"[" * 100_000) is None
    assert json_object(b'{"error": ' + b"[" * 100_000) is None
