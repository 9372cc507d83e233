"""What goes wrong talking to an upstream, named once for every provider.

``Where`` is the one context every message starts with: the operation and the connection (never
a URL, which may carry userinfo, nor a header). ``raise_for_response`` turns a non-2xx answer into
a named error of ``query_relay.exceptions``: the provider's envelope parser says what the body
means, its classifier names what only it knows (an ES error type, a gRPC code), and the status
classes every HTTP upstream shares decide the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from query_relay.exceptions import (
    QueryRelayError,
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.upstream import deadline

# Step Functions keeps a failure's cause small; an upstream reason longer than this is cut.
REASON_LIMIT = 2000
# Error bodies are read to learn the upstream's reason; more than this is not an error envelope.
ERROR_BODY_LIMIT = 64 * 1024
# Any Retry-After is read as at most this (a year): a number, never infinity or an overflow.
RETRY_AFTER_LONGEST_SECONDS = 365 * 24 * 3600.0
_DELAY_SECONDS = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


@dataclass(frozen=True)
class Where:
    """The operation under way and the connection it talks to: how every message begins.
    ``upstream`` names the provider in failures of the query itself ("esql query failed")."""

    upstream: str
    connection: str
    operation: str

    def __str__(self) -> str:
        return f"{self.operation} on connection {self.connection!r}"

    def protocol_error(self, problem: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"{self}: {problem}")

    @contextmanager
    def transport(self) -> Iterator[None]:
        """httpx's transport failures (refused, reset, timed out, broken framing), while connecting
        or while a body is read, become UpstreamUnavailable. Only the exception's class goes into
        the message: httpx's own text can quote the request URL."""
        try:
            yield
        except httpx.TimeoutException as error:
            late = ": the whole exchange's deadline passed" if deadline.expired() else ""
            kind = type(error).__name__
            raise UpstreamUnavailable(f"{self}: the upstream did not answer in time ({kind}{late})") from None
        except httpx.TransportError as error:
            raise UpstreamUnavailable(
                f"{self}: could not reach the upstream ({type(error).__name__}{_errno_hint(error)})"
            ) from None


def _errno_hint(error: Exception) -> str:
    """'connection refused'-style detail from the OS error under httpx's, which carries no URL."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f": {cause.strerror.lower()}"
        cause = cause.__cause__ or cause.__context__
    return ""


def first_line(error: Exception) -> str:
    """yajl's messages draw a multi-line caret picture; the first line says what went wrong. (Near
    bytes that are not UTF-8 the message arrives as bytes.)"""
    message = error.args[0] if len(error.args) == 1 else str(error)
    if isinstance(message, bytes):
        message = message.decode("utf-8", errors="replace")
    return (str(message).strip().splitlines() or [type(error).__name__])[0]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP date. None when absent or
    unreadable; never negative (a date in the past means 'now')."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):  # RFC 9110 says an integer; some send 1.5
        return min(float(text), RETRY_AFTER_LONGEST_SECONDS)  # 400 digits: a long time, not infinity
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate_to_datetime leaves '-0000' naive
        when = when.replace(tzinfo=UTC)
    return min(max((when - (now or datetime.now(UTC))).total_seconds(), 0.0), RETRY_AFTER_LONGEST_SECONDS)


def read_error_body(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """At most ``limit`` bytes of a (streamed) answer: enough for any error envelope or small
    document, and a misbehaving upstream cannot make us hold a huge body in memory."""
    collected = bytearray()
    for chunk in response.iter_bytes():
        collected += chunk
        if len(collected) >= limit:
            break
    return bytes(collected[:limit])


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (a gateway's HTML page, say)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to be an envelope
        return None
    return document if isinstance(document, dict) else None


# --- error answers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """What an upstream's error body says: its code or type, its message, its request id."""

    code: str = ""
    message: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class ErrorAnswer:
    """A non-2xx answer, read: the status, the envelope (message redacted and cut), and the task
    the request was about, if any. A classifier looks at this to name the failure."""

    where: Where
    status: int
    envelope: Envelope
    headers: httpx.Headers
    task_id: str | None = None

    @property
    def described(self) -> str:
        code, message = self.envelope.code, self.envelope.message
        return f"{code}: {message}" if code and message else code or message

    @property
    def located(self) -> str:
        """``<operation> on connection 'x', HTTP 503[, request_id r]``."""
        request_id = self.envelope.request_id
        return f"{self.where}, HTTP {self.status}" + (f", request_id {request_id}" if request_id else "")

    @property
    def suffix(self) -> str:
        return f" ({self.described})" if self.described else ""

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))

    # The errors every upstream names the same way; classifiers use them for their own codes too.

    def task_expired(self, what: str = "the upstream") -> UpstreamTaskExpired:
        return UpstreamTaskExpired(
            f"{self.located}: {what} no longer knows task {self.task_id!r} (unknown or expired){self.suffix}"
        )

    def auth_failed(self) -> UpstreamAuthFailed:
        return UpstreamAuthFailed(f"{self.located}: the upstream refused the credentials{self.suffix}")

    def rate_limited(self, default_seconds: float | None = None) -> UpstreamRateLimited:
        retry_after = self.retry_after if self.retry_after is not None else default_seconds
        hint = f", retry after {retry_after:g}s" if retry_after is not None else ""
        return UpstreamRateLimited(
            f"{self.located}: rate limited by the upstream{hint}{self.suffix}",
            retry_after_seconds=retry_after,
        )

    def unavailable(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"{self.located}: the upstream is unavailable{self.suffix}")

    def query_failed(self, what: str = "query failed") -> UpstreamQueryFailed:
        return UpstreamQueryFailed(
            f"{self.where.upstream} {what}: {self.described or f'HTTP {self.status}'} [{self.located}]"
        )

    def rejected_own_id(self) -> UpstreamProtocolError:
        """The id came from the upstream itself; refusing it means the exchange is broken (or the
        id was altered in the execution state), not that the task aged out."""
        return UpstreamProtocolError(
            f"{self.located}: the upstream rejected its own task id {self.task_id!r}{self.suffix}"
        )


EnvelopeParser = Callable[[bytes], Envelope]
# Names the failure where the provider knows better than the status class; None: the status decides.
Classifier = Callable[[ErrorAnswer], QueryRelayError | None]


def no_envelope(body: bytes) -> Envelope:
    return Envelope()


def raise_for_response(
    response: httpx.Response,
    where: Where,
    *,
    envelope: EnvelopeParser = no_envelope,
    classify: Classifier | None = None,
    redact: Callable[[str], str] = str,
    task_id: str | None = None,
) -> None:
    """Return on 2xx; else read the error body (bounded), parse its envelope, and raise what the
    provider's classifier names, or else what the status class means (``status_error``)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    parsed = envelope(read_error_body(response))
    message = redact(parsed.message)[:REASON_LIMIT]
    answer = ErrorAnswer(
        where=where,
        status=status,
        envelope=Envelope(redact(parsed.code)[:200], message, redact(parsed.request_id)[:200]),
        headers=response.headers,
        task_id=task_id,
    )
    raise (classify(answer) if classify else None) or status_error(answer)


def status_error(answer: ErrorAnswer) -> QueryRelayError:
    """The generic meaning of an HTTP status for an async-task API: 404 about a task: it expired;
    401/403: credentials; 429: slow down (Retry-After); 408 and 5xx: try later; 400: the query
    was refused; anything else: an answer the provider did not expect."""
    status = answer.status
    if status == 404 and answer.task_id is not None:
        return answer.task_expired()
    if status in (401, 403):
        return answer.auth_failed()
    if status == 429:
        return answer.rate_limited()
    if status == 408 or status >= 500:
        return answer.unavailable()
    if status == 400:
        return answer.query_failed()
    return UpstreamProtocolError(f"{answer.located}: unexpected answer{answer.suffix}")
