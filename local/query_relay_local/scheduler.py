"""EventBridge Scheduler's firing, on the local stack: moto stores schedules but never fires them.

``LocalScheduler`` looks at the stack's schedules every second and delivers each firing that came
due since its last look (``query_relay.schedule_times``: cron and at in the schedule's time zone,
rate from its creation, as Scheduler runs a rate schedule first when it is created), the way
Scheduler does: as the role the schedule names, with the target's input and its
``<aws.scheduler.scheduled-time>`` filled in (``LocalStack.deliver_schedule``). A disabled
schedule, or one past its end date, does not fire. Firings missed while nothing looked (the stack
was not running) are not made up, as Scheduler does not make them up either: a backfill is the
way to run past windows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from query_relay.schedule_times import ExpressionError, firings

if TYPE_CHECKING:
    from query_relay_local.stack import LocalStack

logger = logging.getLogger(__name__)

LOOK_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class Firing:
    schedule: str
    scheduled_time: datetime
    execution_arn: str | None  # the delivery's execution; None when the delivery failed
    error: str | None = None


class LocalScheduler:
    def __init__(
        self,
        stack: LocalStack,
        *,
        group: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_fire: Callable[[Firing], None] | None = None,
    ) -> None:
        self._stack = stack
        self._group = group or stack.function_environment.get("SCHEDULE_GROUP") or "default"
        self._clock = clock
        self._on_fire = on_fire
        self._last_look = clock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def fire_due(self, now: datetime | None = None) -> list[Firing]:
        """Deliver every firing in (last look, ``now``], oldest first; what was delivered."""
        now = now or self._clock()
        schedules = self._schedules()  # a look that fails here leaves its span to the next look
        due = [
            (moment, name)
            for name, schedule in schedules
            for moment in self._firings(schedule, self._last_look, now)
        ]
        self._last_look = now
        fired = [self._deliver(name, moment) for moment, name in sorted(due)]
        for firing in fired:
            if self._on_fire is not None:
                self._on_fire(firing)
        return fired

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="local-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.wait(LOOK_EVERY_SECONDS):
            try:
                self.fire_due()
            except Exception:  # a look that failed (the stack stopping) must not end the loop
                logger.exception("the local scheduler could not look at the schedules")

    def _schedules(self) -> list[tuple[str, dict[str, Any]]]:
        client = self._stack.client("scheduler")
        found: list[tuple[str, dict[str, Any]]] = []
        for page in client.get_paginator("list_schedules").paginate(GroupName=self._group):
            for summary in page.get("Schedules", []):
                found.append(
                    (summary["Name"], client.get_schedule(Name=summary["Name"], GroupName=self._group))
                )
        return found

    @staticmethod
    def _firings(schedule: dict[str, Any], since: datetime, now: datetime) -> list[datetime]:
        if schedule.get("State", "ENABLED") != "ENABLED":
            return []
        end = schedule.get("EndDate")
        until = min(now, end) if isinstance(end, datetime) else now
        start = schedule.get("StartDate")
        after = max(since, start) if isinstance(start, datetime) else since
        anchor = start if isinstance(start, datetime) else schedule.get("CreationDate")
        try:
            return list(
                firings(
                    schedule["ScheduleExpression"],
                    schedule.get("ScheduleExpressionTimezone") or "UTC",
                    after,
                    until,
                    anchor=anchor,
                )
            )
        except ExpressionError as error:
            logger.warning("schedule %s is not evaluated: %s", schedule.get("Name"), error)
            return []

    def _deliver(self, name: str, moment: datetime) -> Firing:
        scheduled_time = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            arn = self._stack.deliver_schedule(name, scheduled_time, group=self._group)
        except Exception as error:  # noqa: BLE001 - Scheduler would retry, then drop the run
            logger.warning("schedule %s could not start its %s run: %s", name, scheduled_time, error)
            return Firing(name, moment, None, type(error).__name__)
        logger.info("schedule %s fired for %s", name, scheduled_time)
        return Firing(name, moment, arn)
