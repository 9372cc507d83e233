"""What a Looker job keeps between its steps (``job.provider_state``)."""

from __future__ import annotations

from query_relay.providers.base import ProviderState

# The query's field names travel in the execution state only when they are this small.
STATE_FIELDS_MAX = 64
STATE_FIELDS_MAX_CHARS = 4000


class LookerState(ProviderState):
    """The task's result format, the query's field names (to name the columns of an empty
    result), and whether the last status read said "expired"."""

    result_format: str | None = None
    fields: list[str] | None = None
    expired_seen: bool = False

    @classmethod
    def of_task(cls, result_format: str, fields: list[str] | None) -> LookerState:
        small = fields is not None and (
            len(fields) <= STATE_FIELDS_MAX and sum(map(len, fields)) <= STATE_FIELDS_MAX_CHARS
        )
        return cls(result_format=result_format, fields=fields if small else None)
