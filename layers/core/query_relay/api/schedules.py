"""Schedules: EventBridge Scheduler schedules, in the application's group, that start a job spec.

A schedule's target is the query state machine itself, with the input
``{"schedule": <name>, "scheduled_time": "<aws.scheduler.scheduled-time>", "spec": <job spec>}``.
Scheduler fills in the scheduled time of each run, but cannot name the execution it starts, and the
time holds ':' which execution names may not. So the machine's first state sees ``schedule`` and
starts the real job as a new execution named ``<name>-<time without ':'>``
(``nightly-2026-11-25T020000Z``) and ends; a redelivered trigger finds that name taken and ends too.
Each scheduled run therefore happens once, under a job id that says which run it is.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import islice
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from query_relay import aws
from query_relay.api.exceptions import InvalidPageToken, InvalidSchedule, ScheduleConflict, ScheduleNotFound
from query_relay.api.jobs import links_of as jobs_links_of
from query_relay.api.jobs import validate_job
from query_relay.api.models import (
    MAX_BACKFILL_RUNS,
    SCHEDULE_NAME_PATTERN,
    BackfillAccepted,
    BackfillRequest,
    BackfillRun,
    SchedulePage,
    ScheduleRequest,
    ScheduleSummary,
    ScheduleView,
)
from query_relay.api.settings import get_control_settings
from query_relay.exceptions import InvalidJobSpec
from query_relay.limits import check_spec_fits
from query_relay.models import parse_job_spec
from query_relay.observability import logger
from query_relay.schedule_times import ExpressionError, firings, next_firing
from query_relay.windows import check_schedule, sample_query

if TYPE_CHECKING:
    from mypy_boto3_scheduler.type_defs import GetScheduleOutputTypeDef

SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
# A run that cannot start within this time (throttling, an outage) is dropped rather than run late.
MAXIMUM_EVENT_AGE_SECONDS = 3600
MAXIMUM_RETRY_ATTEMPTS = 20

_RATE = re.compile(r"rate\((?P<value>[1-9]\d{0,8}) (?P<unit>minutes?|hours?|days?)\)")
_CRON = re.compile(r"cron\((?P<fields>[^()]+)\)")
_AT = re.compile(r"at\(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\)")
# EventBridge cron fields: minutes hours day-of-month month day-of-week year (docs: "Cron expressions").
_CRON_FIELDS = (
    ("minutes", r"[0-9,*/-]+"),
    ("hours", r"[0-9,*/-]+"),
    ("day-of-month", r"[0-9,*/?LW-]+"),
    ("month", r"[0-9A-Za-z,*/-]+"),
    ("day-of-week", r"[0-9A-Za-z,*/?L#-]+"),
    ("year", r"[0-9,*/-]+"),
)
# The values each field's numbers may take (an increment after '/' or an nth after '#' excepted).
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (1, 7), (1970, 2199))
_CRON_VALUE = re.compile(r"(?<![/#])\b\d+\b")


def validate_expression(expression: str) -> None:
    """cron(...), rate(...) or at(...), as EventBridge Scheduler takes them; InvalidSchedule if not."""
    if not expression.isascii():  # a digit or a space of another script reads as one to \d and split()
        raise InvalidSchedule("expression", "must be ASCII text")
    if _AT.fullmatch(expression):
        try:
            datetime.strptime(expression[3:-1], "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            raise InvalidSchedule("expression", "at(...) must hold a date and time that exist") from None
        return
    rate = _RATE.fullmatch(expression)
    if rate:
        if (rate["value"] == "1") == rate["unit"].endswith("s"):
            raise InvalidSchedule("expression", "use the singular unit for 1 and the plural otherwise")
        return
    cron = _CRON.fullmatch(expression)
    if not cron:
        raise InvalidSchedule(
            "expression",
            "must be cron(min hour day-of-month month day-of-week year), rate(N unit) or at(...)",
        )
    fields = cron["fields"].split()
    if len(fields) != len(_CRON_FIELDS):
        raise InvalidSchedule("expression", f"cron takes 6 fields, got {len(fields)}")
    for value, (name, allowed) in zip(fields, _CRON_FIELDS, strict=True):
        if not re.fullmatch(allowed, value):
            raise InvalidSchedule("expression", f"cron's {name} field holds characters it may not")
    for value, (name, _), (low, high) in zip(fields, _CRON_FIELDS, _CRON_RANGES, strict=True):
        out_of_range = [number for number in _CRON_VALUE.findall(value) if not low <= int(number) <= high]
        if out_of_range:
            raise InvalidSchedule("expression", f"cron's {name} values must be {low}-{high}")
    if "?" not in (fields[2], fields[4]):
        raise InvalidSchedule("expression", "cron needs '?' in day-of-month or day-of-week")


# In the system's time zone files, but no zone of the IANA database: the host's own zone, a
# placeholder, a rules file; and the copies under posix/ and right/.
_NOT_ZONES = frozenset(("localtime", "posixrules", "Factory"))


@cache
def _known_time_zones() -> frozenset[str]:
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if name not in _NOT_ZONES and not name.startswith(("posix/", "right/"))
    )


def validate_timezone(name: str) -> None:
    """An IANA time zone name, as Scheduler takes them; the message never repeats the value."""
    known = _known_time_zones()
    # Without a time zone database here, Scheduler's own check (ValidationException) decides.
    if name in _NOT_ZONES or (known and name not in known and name != "UTC"):
        raise InvalidSchedule("timezone", "must be an IANA time zone name (e.g. Europe/Paris)")


def schedule_input(request: ScheduleRequest) -> dict[str, Any]:
    """The target's input; each run's spec says which run it is (``scheduled_run``: Scheduler fills
    in the time there too), which gives its query's placeholders their values."""
    spec = request.spec.model_dump(mode="json", exclude={"job_id", "scheduled_run"})
    spec["scheduled_run"] = {
        "schedule": request.name,
        "scheduled_time": SCHEDULED_TIME,
        "expression": request.expression,
        "timezone": request.timezone,
    }
    return {"schedule": request.name, "scheduled_time": SCHEDULED_TIME, "spec": spec}


def create_schedule(request: ScheduleRequest) -> ScheduleView:
    validate_expression(request.expression)
    validate_timezone(request.timezone)
    # The query as a run will have it: its placeholders replaced by times (query_relay.windows).
    validate_job(request.spec.model_copy(update={"query": sample_query(request.spec.query)}))
    if problem := check_schedule(request.spec.query, request.expression):
        raise InvalidSchedule("spec", problem)
    target_input = schedule_input(request)
    check_spec_fits(target_input["spec"], where="spec.")
    settings = get_control_settings()
    if not settings.scheduler_role_arn:
        raise InvalidSchedule("name", "schedules are not available: SCHEDULER_ROLE_ARN is not set")
    client = aws.scheduler()
    try:
        client.create_schedule(
            Name=request.name,
            GroupName=settings.schedule_group,
            ScheduleExpression=request.expression,
            ScheduleExpressionTimezone=request.timezone,
            State="ENABLED" if request.enabled else "DISABLED",
            Description=request.description,
            FlexibleTimeWindow={"Mode": "OFF"},
            Target={
                "Arn": settings.state_machine_arn,
                "RoleArn": settings.scheduler_role_arn,
                "Input": json.dumps(target_input),
                "RetryPolicy": {
                    "MaximumEventAgeInSeconds": MAXIMUM_EVENT_AGE_SECONDS,
                    "MaximumRetryAttempts": MAXIMUM_RETRY_ATTEMPTS,
                },
            },
        )
    except client.exceptions.ConflictException:
        raise ScheduleConflict(f"a schedule named {request.name!r} exists already") from None
    except client.exceptions.ValidationException as error:
        raise InvalidSchedule("expression", error.response["Error"]["Message"]) from None
    logger.info("schedule created", extra={"schedule": request.name, "expression": request.expression})
    return get_schedule(request.name)


def _scheduler_schedule(name: str) -> GetScheduleOutputTypeDef:
    """Scheduler's description of the schedule; ScheduleNotFound when it has none by this name."""
    _check_name(name)
    client = aws.scheduler()
    try:
        return client.get_schedule(Name=name, GroupName=get_control_settings().schedule_group)
    except client.exceptions.ResourceNotFoundException:
        raise ScheduleNotFound("no schedule has this name") from None


def get_schedule(name: str) -> ScheduleView:
    schedule = _scheduler_schedule(name)
    spec = None
    try:
        document = json.loads(schedule["Target"].get("Input") or "{}").get("spec")
        if isinstance(document, dict):
            document.pop("scheduled_run", None)  # each run's own, once Scheduler fills in its time
        spec = parse_job_spec(document)
    except (InvalidJobSpec, ValueError, AttributeError):
        logger.warning("schedule input is not ours", extra={"schedule": name})
    return ScheduleView(
        name=schedule["Name"],
        expression=schedule["ScheduleExpression"],
        timezone=schedule.get("ScheduleExpressionTimezone") or "UTC",
        enabled=schedule.get("State", "ENABLED") == "ENABLED",
        description=schedule.get("Description") or "",
        spec=spec,
        created_at=schedule.get("CreationDate"),
        links=links_of(schedule["Name"]),
    )


_BAD_TOKEN_CODES = ("ValidationException", "InvalidToken")


def list_schedules(limit: int = 20, next_token: str | None = None) -> SchedulePage:
    arguments: dict[str, Any] = {"GroupName": get_control_settings().schedule_group, "MaxResults": limit}
    if next_token:
        arguments["NextToken"] = next_token
    client = aws.scheduler()
    try:
        page = client.list_schedules(**arguments)
    except ClientError as error:
        # Scheduler answers a bad token with ValidationException; moto (and other services) with
        # InvalidToken. Either way it is the caller's token, not our failure.
        if error.response.get("Error", {}).get("Code") not in _BAD_TOKEN_CODES:
            raise
        raise InvalidPageToken("not a next_token of this listing (or it has expired)") from None
    return SchedulePage(
        schedules=[
            ScheduleSummary(
                name=summary["Name"],
                enabled=summary.get("State", "ENABLED") == "ENABLED",
                created_at=summary.get("CreationDate"),
                links=links_of(summary["Name"]),
            )
            for summary in page["Schedules"]
        ],
        next_token=page.get("NextToken"),
    )


def delete_schedule(name: str) -> ScheduleView:
    """Delete it; the answer is what was deleted."""
    deleted = get_schedule(name)
    client = aws.scheduler()
    try:
        client.delete_schedule(Name=name, GroupName=get_control_settings().schedule_group)
    except client.exceptions.ResourceNotFoundException:
        raise ScheduleNotFound("no schedule has this name") from None
    logger.info("schedule deleted", extra={"schedule": name})
    return deleted


def links_of(name: str) -> dict[str, str]:
    return {"self": f"/schedules/{name}"}


def _check_name(name: str) -> None:
    """A name no schedule of ours can have is not found, without asking Scheduler (which would
    answer ValidationException for one outside its own pattern)."""
    if not re.fullmatch(SCHEDULE_NAME_PATTERN, name):
        raise ScheduleNotFound(f"no such schedule: schedule names match {SCHEDULE_NAME_PATTERN}")


# --- backfill -------------------------------------------------------------------------------------


def backfill(name: str, request: BackfillRequest, *, now: datetime | None = None) -> BackfillAccepted:
    """Start the runs a schedule had at past times, exactly as Scheduler starts them (the same
    spec, with its ``scheduled_run``, and the same job id ``<name>-<scheduled time>``): a run that
    exists already is not started again. Every time must be one the schedule runs at, in the past;
    at most MAX_BACKFILL_RUNS of them."""
    schedule = _scheduler_schedule(name)
    expression = schedule["ScheduleExpression"]
    zone = schedule.get("ScheduleExpressionTimezone") or "UTC"
    anchor = schedule.get("StartDate") or schedule.get("CreationDate")
    times = _backfill_times(request, expression, zone, anchor, now or datetime.now(UTC))
    spec = json.loads(schedule["Target"].get("Input") or "{}").get("spec")
    if not isinstance(spec, dict):
        raise InvalidSchedule("name", "this schedule's target is not a job spec")
    sfn = aws.sfn()
    runs = [_start_run(sfn, name, spec, moment) for moment in times]
    logger.info(
        "backfill", extra={"schedule": name, "runs": len(runs), "started": sum(run.started for run in runs)}
    )
    return BackfillAccepted(schedule=name, runs=runs)


def _backfill_times(
    request: BackfillRequest, expression: str, zone: str, anchor: datetime | None, now: datetime
) -> list[datetime]:
    try:
        if request.scheduled_time is not None:
            moment = request.scheduled_time.astimezone(UTC)
            if next_firing(expression, zone, moment - timedelta(microseconds=1), anchor=anchor) != moment:
                raise InvalidSchedule(
                    "scheduled_time", f"{expression} ({zone}) does not run at {_iso(moment)}"
                )
            times = [moment]
        elif request.from_ is not None and request.to is not None:
            first = request.from_.astimezone(UTC) - timedelta(microseconds=1)
            times = list(
                islice(firings(expression, zone, first, request.to, anchor=anchor), MAX_BACKFILL_RUNS + 1)
            )
        else:  # pragma: no cover - the request's own validator refuses it
            raise InvalidSchedule("from", 'give "scheduled_time", or "from" and "to"')
    except ExpressionError as error:
        raise InvalidSchedule("expression", str(error)) from None
    if len(times) > MAX_BACKFILL_RUNS:
        raise InvalidSchedule(
            "to", f"the range holds more than {MAX_BACKFILL_RUNS} runs; backfill it in parts"
        )
    if not times:
        raise InvalidSchedule("from", f"{expression} ({zone}) has no run in this range")
    if times[-1] > now:
        raise InvalidSchedule("to", f"{_iso(times[-1])} is still to come: a backfill runs past times")
    return times


def _start_run(sfn: Any, name: str, spec: dict[str, Any], moment: datetime) -> BackfillRun:
    scheduled_time = _iso(moment)
    job_id = f"{name}-{scheduled_time.replace(':', '')}"  # as the machine's NameScheduledRun names it
    run_spec = spec | {"scheduled_run": {**spec.get("scheduled_run", {}), "scheduled_time": scheduled_time}}
    check_spec_fits(run_spec)
    try:
        sfn.start_execution(
            stateMachineArn=get_control_settings().state_machine_arn, name=job_id, input=json.dumps(run_spec)
        )
        started = True
    except sfn.exceptions.ExecutionAlreadyExists:
        started = False
    return BackfillRun(job_id=job_id, scheduled_time=moment, started=started, links=jobs_links_of(job_id))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
