"""Vocabulary shared by the ES|QL emulator's parts: column types, values, dates and errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

# One cell. Dates are held as epoch milliseconds (int) and turned into ISO 8601 text on output.
Value = None | bool | int | float | str
Row = tuple[Value, ...]

KEYWORD = "keyword"
TEXT = "text"
INTEGER = "integer"
LONG = "long"
DOUBLE = "double"
DATE = "date"
BOOLEAN = "boolean"
IP = "ip"
NULL = "null"
UNSUPPORTED = "unsupported"
#: Only an argument of DATE_TRUNC; never a column type.
TIME_SPAN = "time_span"

NUMERIC_TYPES = frozenset({INTEGER, LONG, DOUBLE})
STRING_TYPES = frozenset({KEYWORD, TEXT})

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}


# --- dates -----------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLIS_PER_DAY = 86_400_000


def millis_of(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@lru_cache(maxsize=8192)
def _minute_text(minute_number: int) -> str:
    return (_EPOCH + timedelta(minutes=minute_number)).strftime("%Y-%m-%dT%H:%M:")


_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))


def format_date(millis: int) -> str:
    """`2024-01-31T12:00:00.000Z`: ES's output for date columns (UTC, milliseconds, `Z`).

    Hot on large results, hence a cached minute prefix and digit tables rather than datetimes.
    """
    minute_number, millis_of_minute = divmod(millis, 60_000)
    seconds, millis_part = divmod(millis_of_minute, 1000)
    return f"{_minute_text(minute_number)}{_TWO_DIGITS[seconds]}.{_THREE_DIGITS[millis_part]}Z"


def parse_date(text: str) -> int | None:
    """Epoch millis of an ISO 8601 date or date-time (UTC when no offset is given), else None."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return millis_of(moment)


# --- errors ----------------------------------------------------------------------------------


class EsqlError(Exception):
    """An error ES answers with its JSON error envelope."""

    status = 400
    error_type = "illegal_argument_exception"

    def __init__(self, reason: str, *, status: int | None = None, error_type: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type

    def envelope(self) -> dict[str, object]:
        cause = {"type": self.error_type, "reason": self.reason}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


class ParsingError(EsqlError):
    """A query ES's grammar rejects: `line 1:15: mismatched input ...`."""

    error_type = "parsing_exception"

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"line {line}:{column}: {message}")


@dataclass(frozen=True)
class Problem:
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}:{self.column}: {self.message}"


class VerificationError(EsqlError):
    """A well-formed query naming things that do not exist or mixing types: `Found 1 problem...`."""

    error_type = "verification_exception"

    def __init__(self, problems: list[Problem]) -> None:
        noun = "problem" if len(problems) == 1 else "problems"
        lines = "\n".join(str(problem) for problem in problems)
        super().__init__(f"Found {len(problems)} {noun}\n{lines}")
        self.problems = problems
