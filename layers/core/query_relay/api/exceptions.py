"""Errors of the control plane (the API and the console-stop handler).

They subclass ``QueryRelayError`` so one exception handler maps every domain error to an HTTP
answer (``query_relay.api.errors``); they are not workflow errors and never reach the ASL.
"""

from __future__ import annotations

from query_relay.exceptions import QueryRelayError


class JobNotFound(QueryRelayError):
    """No execution is named by this job id."""


class JobConflict(QueryRelayError):
    """The job id is taken by a job with a different spec."""


class JobFinished(QueryRelayError):
    """The job has ended already; there is nothing to cancel."""


class InvalidPageToken(QueryRelayError):
    """The next_token is not one this API handed out (or it has expired)."""


class ScheduleNotFound(QueryRelayError):
    """No schedule of this name in the application's schedule group."""


class ScheduleConflict(QueryRelayError):
    """A schedule of this name exists already."""


class InvalidSchedule(QueryRelayError):
    """The schedule's expression, time zone or spec does not validate."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
