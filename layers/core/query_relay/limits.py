"""AWS's limits on what a job carries through Step Functions, and the budget that keeps a job
inside them.

Step Functions caps an execution's input and every state's payload (its input after
``Parameters``, a task's result, its output) at 262,144 bytes of UTF-8 JSON; a state that grows
past it fails the execution with ``States.DataLimitExceeded``, which no ``States.ALL`` Catch
catches, so Cleanup never runs and the upstream task is left running.
(https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html,
https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html)

The largest state is Cleanup's output: the spec, the job state, the caught error and the
failure, side by side. Each part that could grow is bounded here, before anything starts:

- the spec: ``check_spec_fits`` (API, CLI and Submit refuse a bigger one, naming ``query``, the
  only field without a bound of its own);
- the job state: its only open part is the provider's state, which each provider keeps under
  ``PROVIDER_STATE_MAX_BYTES`` before it submits (Veza's query spec, Looker's field names); a
  parallel fetch's plan holds at most ``parallel.MAX_FETCH_BRANCHES`` branches (a few KB), and
  its branches keep the parts they land in S3, not in the state;
- the caught error and the failure: messages are cut at ``ERROR_MESSAGE_MAX_CHARS``
  (``query_relay.exceptions.cut_message``: every named error, and the cause Cleanup reports).

``tests/unit/test_limits.py`` builds the worst case from these bounds and checks it fits with
``MARGIN_BYTES`` to spare.
"""

from __future__ import annotations

import json
from typing import Any

from query_relay.exceptions import MESSAGE_MAX_CHARS, InvalidJobSpec

# Step Functions quotas (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html;
# StartExecution: https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html).
STATE_PAYLOAD_MAX_BYTES = 262_144
EXECUTION_NAME_MAX_CHARS = 80
# EventBridge Scheduler names and schedule group names: 1-64 of [0-9a-zA-Z-_.]
# (https://docs.aws.amazon.com/scheduler/latest/APIReference/API_CreateSchedule.html).
SCHEDULER_NAME_MAX_CHARS = 64
SCHEDULER_NAME_PATTERN = r"^[0-9a-zA-Z._-]{1,64}$"
# What a scheduled run's job id adds to its schedule's name: "-" + the scheduled time without ':'
# (statemachine/query.asl.json, NameScheduledRun).
SCHEDULED_RUN_SUFFIX = "-2026-11-25T020000Z"

# The budget (see the module docstring).
JOB_SPEC_MAX_BYTES = 96 * 1024
PROVIDER_STATE_MAX_BYTES = 72 * 1024
ERROR_MESSAGE_MAX_CHARS = MESSAGE_MAX_CHARS
MARGIN_BYTES = 32 * 1024


def json_size(document: Any) -> int:
    """Bytes of ``document`` as compact UTF-8 JSON, the way Step Functions counts a payload."""
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def check_spec_fits(document: Any, where: str = "") -> None:
    """InvalidJobSpec naming ``query`` when the spec is too big to travel through the state machine
    with the job's state beside it; ``where`` prefixes the field (``spec.`` in a schedule)."""
    size = json_size(document)
    if size > JOB_SPEC_MAX_BYTES:
        raise InvalidJobSpec(
            f"invalid job spec: {where}query: the job spec is {size} bytes as JSON; at most "
            f"{JOB_SPEC_MAX_BYTES} fit in Step Functions' {STATE_PAYLOAD_MAX_BYTES}-byte payload "
            "next to the job's state (keep large inputs in the upstream, not in the query)"
        )
