"""A scheduled run's own time window, as whole values inside its query.

A schedule's ``query`` may hold ``{{scheduled_time}}``, ``{{window_start}}`` and ``{{window_end}}``
as whole string values (an ES|QL named param, a Looker filter value, a Veza spec value, a SQL
binding): each run gets its own values, ISO 8601 in UTC (``2026-11-25T01:00:00Z``). They are never
spliced into query text: a string that holds a placeholder among other text is refused.

The window of a run scheduled at T ends at T and starts at the schedule's previous run: the
previous cron time (in the schedule's time zone), T minus the rate, or, for a one-time ``at()``
schedule, nowhere (only ``{{scheduled_time}}`` may be used). A run knows its schedule from the job
spec's ``scheduled_run`` (its schedule, scheduled time, expression and time zone), which the
schedule's target input carries with Scheduler's ``<aws.scheduler.scheduled-time>`` filled in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from query_relay.exceptions import InvalidJobSpec
from query_relay.models import PLACEHOLDER_TOKENS, PLACEHOLDERS, JobSpec, ScheduledRun, query_strings
from query_relay.schedule_times import At, ExpressionError, Rate, parse, previous_firing

WINDOW_PLACEHOLDERS = ("window_start", "window_end")
# What a schedule's query is checked with when the schedule is created (no run has a time yet).
SAMPLE_TIME = "2026-01-01T00:00:00Z"


def found(query: Any) -> list[tuple[str, str]]:
    """Each placeholder standing as a whole value: (its path in the query, its name)."""
    return [
        (path, PLACEHOLDER_TOKENS[value])
        for path, value in query_strings(query)
        if value in PLACEHOLDER_TOKENS
    ]


def resolved_query(spec: JobSpec) -> dict[str, Any]:
    """The job's query with its placeholders replaced by its scheduled run's values; InvalidJobSpec
    when it holds one but is no scheduled run (or a one-time schedule's run asks for a window)."""
    placeholders = found(spec.query)
    if not placeholders:
        return spec.query
    run = spec.scheduled_run
    if run is None:
        path, name = placeholders[0]
        raise InvalidJobSpec(
            f"invalid job spec: {path}: {{{{{name}}}}} has a value only in a schedule's runs (its "
            "scheduled time and window); this job is not one"
        )
    return _replaced_query(spec.query, run_values(run, needed={name for _, name in placeholders}))


def sample_query(query: dict[str, Any]) -> dict[str, Any]:
    """The query with every placeholder replaced by a sample time: what a schedule's query is
    validated as when the schedule is created."""
    return _replaced_query(query, dict.fromkeys(PLACEHOLDERS, SAMPLE_TIME))


def run_values(run: ScheduledRun, *, needed: set[str] | None = None) -> dict[str, str]:
    """The run's ``scheduled_time``, ``window_start`` and ``window_end`` (those ``needed``)."""
    scheduled = run.scheduled_time.astimezone(UTC)
    values = {"scheduled_time": _iso(scheduled), "window_end": _iso(scheduled)}
    if needed is None or needed & set(WINDOW_PLACEHOLDERS):
        values["window_start"] = _iso(window_start(run))
    return values


def window_start(run: ScheduledRun) -> datetime:
    """When the run's window starts: its schedule's previous run."""
    try:
        expression = parse(run.expression)
        if isinstance(expression, At):
            raise InvalidJobSpec(
                f"invalid job spec: scheduled_run: a one-time schedule ({run.expression}) has no window; "
                "use {{scheduled_time}}"
            )
        if isinstance(expression, Rate):
            return run.scheduled_time.astimezone(UTC) - expression.every
        earlier = previous_firing(run.expression, run.timezone, run.scheduled_time.astimezone(UTC))
    except ExpressionError as error:
        raise InvalidJobSpec(f"invalid job spec: scheduled_run.expression: {error}") from None
    if earlier is None:
        raise InvalidJobSpec(
            f"invalid job spec: scheduled_run: {run.expression} ran at no time before "
            f"{_iso(run.scheduled_time)}: the run has no window"
        )
    return earlier


def check_schedule(query: dict[str, Any], expression: str) -> str | None:
    """Why a schedule's query cannot run with its expression (a window asked of a one-time
    schedule), naming the placeholder's path; None when it can."""
    try:
        one_time = isinstance(parse(expression), At)
    except ExpressionError:
        return None  # the expression's own check names its fault
    for path, name in found(query):
        if one_time and name in WINDOW_PLACEHOLDERS:
            return f"{path}: {{{{{name}}}}}: a one-time schedule has no window (use {{{{scheduled_time}}}})"
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _replaced_query(query: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    return {key: _replaced(item, values) for key, item in query.items()}


def _replaced(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        name = PLACEHOLDER_TOKENS.get(value)
        return values[name] if name is not None else value
    if isinstance(value, dict):
        return {key: _replaced(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_replaced(item, values) for item in value]
    return value
