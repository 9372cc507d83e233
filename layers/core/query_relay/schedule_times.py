"""When an EventBridge Scheduler expression fires: ``cron(...)``, ``rate(...)`` and ``at(...)`` in a
schedule's time zone (https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html).

- ``cron(minutes hours day-of-month month day-of-week year)``, in wall-clock time of the time zone:
  lists (``,``), ranges (``-``, wrapping past the end as in ``FRI-MON``), increments (``/``),
  ``*``, ``?`` (day-of-month or day-of-week, whichever the other names), month names ``JAN``-``DEC``,
  day names ``SUN``-``SAT`` (1 is Sunday), ``L`` (the month's last day; ``5L`` its last Thursday),
  ``W`` (``15W``: the weekday nearest the 15th, in the same month; ``LW``: the last weekday) and
  ``#`` (``6#3``: the third Friday).
- ``rate(N unit)``: every N minutes, hours or days from its first run (``anchor``, the schedule's
  start: Scheduler runs a rate schedule first when it is created).
- ``at(yyyy-mm-ddThh:mm:ss)``: once, at that wall-clock time.

Daylight saving time, as Scheduler handles it (https://repost.aws/knowledge-center/eventbridge-scheduler-adjust-dst):
a wall-clock time that does not exist in the zone (the hour clocks skip in spring) does not fire,
and one that exists twice (the hour repeated in autumn) fires once, at its first occurrence; a
rate of days is of 24-hour days. Times are returned in UTC.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

_MONTHS = {name.upper(): number for number, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
_RATE = re.compile(r"rate\((?P<value>[1-9]\d{0,8}) (?P<unit>minute|hour|day)s?\)")
_AT = re.compile(r"at\((?P<when>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)")
_CRON = re.compile(r"cron\((?P<fields>[^()]+)\)")
_UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
# How far a search for the next or previous firing looks before it says there is none.
SEARCH_YEARS = 200


class ExpressionError(ValueError):
    """The expression is not one this module can evaluate (the message names the part)."""


@dataclass(frozen=True)
class _DayOfMonth:
    days: frozenset[int]
    last: bool = False  # L
    last_weekday: bool = False  # LW
    nearest_weekday: frozenset[int] = frozenset()  # nW
    any: bool = False  # * or ?

    def matches(self, day: date) -> bool:
        if self.any:
            return True
        length = calendar.monthrange(day.year, day.month)[1]
        if day.day in self.days or (self.last and day.day == length):
            return True
        if self.last_weekday and day == _weekday_nearest(day.replace(day=length)):
            return True
        return any(
            day == _weekday_nearest(day.replace(day=min(wanted, length))) for wanted in self.nearest_weekday
        )


@dataclass(frozen=True)
class _DayOfWeek:
    days: frozenset[int]  # 1 (Sunday) .. 7
    last_of_month: frozenset[int] = frozenset()  # nL
    nth: frozenset[tuple[int, int]] = frozenset()  # d#n
    any: bool = False

    def matches(self, day: date) -> bool:
        if self.any:
            return True
        weekday = (day.isoweekday() % 7) + 1  # Sunday 1 .. Saturday 7
        if weekday in self.days:
            return True
        length = calendar.monthrange(day.year, day.month)[1]
        if weekday in self.last_of_month and day.day + 7 > length:
            return True
        return (weekday, (day.day - 1) // 7 + 1) in self.nth


@dataclass(frozen=True)
class Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    day_of_month: _DayOfMonth
    months: frozenset[int]
    day_of_week: _DayOfWeek
    years: frozenset[int] | None  # None: every year

    def matches_day(self, day: date) -> bool:
        if self.years is not None and day.year not in self.years:
            return False
        return day.month in self.months and self.day_of_month.matches(day) and self.day_of_week.matches(day)

    def times_of_day(self) -> list[time]:
        return [time(hour, minute) for hour in self.hours for minute in self.minutes]


@dataclass(frozen=True)
class Rate:
    every: timedelta


@dataclass(frozen=True)
class At:
    when: datetime  # naive: wall-clock time in the schedule's zone


Expression = Cron | Rate | At


def parse(expression: str) -> Expression:
    """The expression, or ExpressionError naming what is wrong."""
    if rate := _RATE.fullmatch(expression):
        return Rate(int(rate["value"]) * _UNITS[rate["unit"]])
    if at := _AT.fullmatch(expression):
        try:
            return At(datetime.strptime(at["when"], "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            raise ExpressionError("at(...) must hold a date and time that exist") from None
    cron = _CRON.fullmatch(expression)
    if cron is None:
        raise ExpressionError("must be cron(...), rate(...) or at(...)")
    fields = cron["fields"].split()
    if len(fields) != 6:
        raise ExpressionError(f"cron takes 6 fields, got {len(fields)}")
    minutes, hours, day_of_month, months, day_of_week, years = fields
    return Cron(
        minutes=tuple(sorted(_values(minutes, 0, 59, "minutes"))),
        hours=tuple(sorted(_values(hours, 0, 23, "hours"))),
        day_of_month=_parse_day_of_month(day_of_month),
        months=frozenset(_values(months, 1, 12, "month", _MONTHS)),
        day_of_week=_parse_day_of_week(day_of_week),
        years=None if years in ("*", "?") else frozenset(_values(years, 1970, 2199, "year")),
    )


def next_firing(
    expression: str, zone: str, after: datetime, *, anchor: datetime | None = None
) -> datetime | None:
    """The first time (UTC) the expression fires strictly after ``after``; None if it never does.
    A rate counts from ``anchor`` (its first run), which it needs."""
    parsed = parse(expression)
    if isinstance(parsed, Rate):
        start = _rate_anchor(anchor)
        if after < start:
            return start
        return start + ((after - start) // parsed.every + 1) * parsed.every
    if isinstance(parsed, At):
        moment = _utc(parsed.when, _zone(zone))
        return moment if moment is not None and moment > after else None
    return next(_cron_firings(parsed, _zone(zone), after, forward=True), None)


def previous_firing(
    expression: str, zone: str, before: datetime, *, anchor: datetime | None = None
) -> datetime | None:
    """The last time (UTC) the expression fired strictly before ``before``; None if it never did."""
    parsed = parse(expression)
    if isinstance(parsed, Rate):
        start = _rate_anchor(anchor)
        if before <= start:
            return None
        return start + ((before - start - timedelta(microseconds=1)) // parsed.every) * parsed.every
    if isinstance(parsed, At):
        moment = _utc(parsed.when, _zone(zone))
        return moment if moment is not None and moment < before else None
    return next(_cron_firings(parsed, _zone(zone), before, forward=False), None)


def firings(
    expression: str, zone: str, after: datetime, until: datetime, *, anchor: datetime | None = None
) -> Iterator[datetime]:
    """Every time (UTC) the expression fires in (``after``, ``until``], in order."""
    moment: datetime | None = after
    while moment is not None and (moment := next_firing(expression, zone, moment, anchor=anchor)) is not None:
        if moment > until:
            return
        yield moment


# --- cron ---------------------------------------------------------------------------------------


def _cron_firings(cron: Cron, zone: tzinfo, start: datetime, *, forward: bool) -> Iterator[datetime]:
    """The firings after (forward) or before ``start``, nearest first, up to SEARCH_YEARS away."""
    local_day = start.astimezone(zone).date()
    step = timedelta(days=1 if forward else -1)
    times = cron.times_of_day() if forward else cron.times_of_day()[::-1]
    # A firing's UTC time is within a day of its wall-clock date: look a day before the start's.
    day = local_day - step
    for _ in range(SEARCH_YEARS * 366 + 2):
        if cron.matches_day(day):
            for clock in times:
                moment = _utc(datetime.combine(day, clock), zone)
                if moment is not None and (moment > start if forward else moment < start):
                    yield moment
        day += step
        if not date.min + timedelta(days=2) <= day <= date.max - timedelta(days=2):
            return


def _values(field: str, low: int, high: int, name: str, names: dict[str, int] | None = None) -> set[int]:
    """The numbers a field's lists, ranges and increments name (``*`` all of low..high)."""
    found: set[int] = set()
    for part in field.split(","):
        base, _, increment = part.partition("/")
        step = _number(increment, 1, high - low + 1 if high > low else 1, name) if increment else 1
        if base in ("*", "?"):
            first, last = low, high
        elif "-" in base:
            start_text, _, end_text = base.partition("-")
            first, last = (
                _number(start_text, low, high, name, names),
                _number(end_text, low, high, name, names),
            )
        else:
            first = _number(base, low, high, name, names)
            last = high if increment else first
        span = (last - first) % (high - low + 1) if last < first else last - first  # FRI-MON wraps
        found.update(low + (first - low + offset) % (high - low + 1) for offset in range(0, span + 1, step))
    return found


def _number(text: str, low: int, high: int, name: str, names: dict[str, int] | None = None) -> int:
    value = names.get(text.upper()) if names else None
    if value is None:
        if not text.isdigit():
            raise ExpressionError(f"cron's {name} field holds {text!r}, not a value")
        value = int(text)
    if not low <= value <= high:
        raise ExpressionError(f"cron's {name} values must be {low}-{high}")
    return value


def _parse_day_of_month(field: str) -> _DayOfMonth:
    if field in ("*", "?"):
        return _DayOfMonth(frozenset(), any=True)
    days: set[int] = set()
    last = last_weekday = False
    nearest: set[int] = set()
    for part in field.split(","):
        if part == "L":
            last = True
        elif part == "LW":
            last_weekday = True
        elif part.endswith("W"):
            nearest.add(_number(part[:-1], 1, 31, "day-of-month"))
        else:
            days |= _values(part, 1, 31, "day-of-month")
    return _DayOfMonth(frozenset(days), last, last_weekday, frozenset(nearest))


def _parse_day_of_week(field: str) -> _DayOfWeek:
    if field in ("*", "?"):
        return _DayOfWeek(frozenset(), any=True)
    days: set[int] = set()
    last: set[int] = set()
    nth: set[tuple[int, int]] = set()
    for part in field.split(","):
        if part == "L":
            days.add(7)  # L alone: the last day of the week, Saturday
        elif part.endswith("L"):
            last.add(_number(part[:-1], 1, 7, "day-of-week", _DAYS))
        elif "#" in part:
            day_text, _, which = part.partition("#")
            nth.add((_number(day_text, 1, 7, "day-of-week", _DAYS), _number(which, 1, 5, "day-of-week")))
        else:
            days |= _values(part, 1, 7, "day-of-week", _DAYS)
    return _DayOfWeek(frozenset(days), frozenset(last), frozenset(nth))


def _weekday_nearest(day: date) -> date:
    """The weekday (Monday-Friday) nearest ``day`` in its month (``W``)."""
    if day.weekday() < 5:
        return day
    length = calendar.monthrange(day.year, day.month)[1]
    if day.weekday() == 5:  # Saturday: the Friday before, or the Monday after on the 1st
        return day - timedelta(days=1) if day.day > 1 else day + timedelta(days=2)
    return day + timedelta(days=1) if day.day < length else day - timedelta(days=2)  # Sunday


# --- time zones ---------------------------------------------------------------------------------


def _zone(name: str) -> tzinfo:
    return UTC if name == "UTC" else ZoneInfo(name)


def _utc(wall: datetime, zone: tzinfo) -> datetime | None:
    """A wall-clock time in ``zone`` as UTC (its first occurrence); None when the zone skips it."""
    local = wall.replace(tzinfo=zone, fold=0)
    moment = local.astimezone(UTC)
    if moment.astimezone(zone).replace(tzinfo=None) != wall:
        return None  # in the gap clocks skip
    return moment


def _rate_anchor(anchor: datetime | None) -> datetime:
    if anchor is None:
        raise ExpressionError("a rate(...) schedule counts from its first run: the anchor is needed")
    return anchor
