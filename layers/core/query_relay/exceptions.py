"""Named errors: the contract between the library and the state machine.

Step Functions matches a Lambda failure by the exception's class name (``errorType``), so every
name raised here is spelled the same way in ``statemachine/query.asl.json``; a test keeps the two
in step. ``TRANSIENT`` ones are retried by the ASL with backoff; the rest are caught and fail the
job after Cleanup.

Messages never carry secrets: they are built from status codes, upstream error types and
upstream-provided reasons only.
"""

from __future__ import annotations

from collections.abc import Callable

# A failure's message travels in the execution's state (Catch's ResultPath, Cleanup's failure),
# whose size Step Functions caps: it is cut at this length (query_relay.limits has the budget).
MESSAGE_MAX_CHARS = 4096
_CUT_MARK = " ... (cut)"


def cut_message(message: str, max_chars: int = MESSAGE_MAX_CHARS) -> str:
    """``message``, cut to ``max_chars`` (marked) when longer."""
    if len(message) <= max_chars:
        return message
    return message[: max_chars - len(_CUT_MARK)] + _CUT_MARK


class QueryRelayError(Exception):
    """Base of every error the workflow names."""

    transient: bool = False

    def __init__(self, message: str) -> None:
        message = cut_message(message)
        super().__init__(message)
        self.message = message

    def scrub(self, redact: Callable[[str], str]) -> None:
        """Pass the message through ``redact`` (a connection's secrets out), keeping the error."""
        self.message = redact(self.message)
        self.args = (self.message, *self.args[1:])


# --- transient: retried by the state machine -----------------------------------------------------


class UpstreamUnavailable(QueryRelayError):
    """The upstream could not be reached or answered 5xx; trying again later may work."""

    transient = True


class UpstreamRateLimited(QueryRelayError):
    """The upstream answered 429."""

    transient = True

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


# --- permanent: caught, cleaned up, the job fails with this name --------------------------------


class InvalidJobSpec(QueryRelayError):
    """The job spec does not validate; nothing was sent upstream."""


class ConnectionNotFound(QueryRelayError):
    """The job names a connection that does not exist."""


class InvalidConnection(QueryRelayError):
    """The connection document exists but does not validate."""


class UpstreamAuthFailed(QueryRelayError):
    """The upstream refused our credentials (401/403)."""


class UpstreamQueryFailed(QueryRelayError):
    """The upstream rejected or failed the query itself (syntax, verification, runtime error)."""


class UpstreamTaskExpired(QueryRelayError):
    """The upstream no longer knows the task (unknown or expired id)."""


class UpstreamPartialResult(QueryRelayError):
    """The upstream says its answer is partial (ES|QL ``is_partial``) and the spec did not opt in."""


class UpstreamProtocolError(QueryRelayError):
    """The upstream answered something this provider does not understand."""


class ColumnTypeMismatch(QueryRelayError):
    """A value of the result does not fit its column's type in a Parquet part (text in an integer
    column, a list in a number column); nothing is landed."""


class CatalogSchemaConflict(QueryRelayError):
    """The result's columns (or format) change its catalog table in a way the spec does not allow
    (``output.catalog.allow_type_changes``); nothing was registered and nothing is landed."""


class CatalogRegistrationFailed(QueryRelayError):
    """Glue refused to register the result (no such database, access denied); nothing is landed."""


class QueryTimedOut(QueryRelayError):
    """The job ran longer than ``polling.timeout_seconds``; the upstream task was cancelled."""


ERRORS: dict[str, type[QueryRelayError]] = {
    cls.__name__: cls
    for cls in (
        UpstreamUnavailable,
        UpstreamRateLimited,
        InvalidJobSpec,
        ConnectionNotFound,
        InvalidConnection,
        UpstreamAuthFailed,
        UpstreamQueryFailed,
        UpstreamTaskExpired,
        UpstreamPartialResult,
        UpstreamProtocolError,
        ColumnTypeMismatch,
        CatalogSchemaConflict,
        CatalogRegistrationFailed,
        QueryTimedOut,
    )
}
TRANSIENT_ERRORS = frozenset(name for name, cls in ERRORS.items() if cls.transient)
