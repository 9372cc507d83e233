"""Upstream tasks a Submit has started, recorded the moment the upstream names them.

A Submit whose Lambda dies after the upstream accepted the query (killed, out of memory, timed out
during the submit wait) is retried by the state machine. Without a record the retry would start a
second task and leave the first running upstream. So each provider reports the task id as soon as
it has one (``SubmitOptions.on_started``), Submit writes it to the control table as
``{"pk": "submission#<execution ARN>", "job_id", "upstream_id", "state", "submitted_at"}``, and a
retried Submit (``retry_count`` > 0) that finds such a record for its own execution and job
resumes that task (the job goes on to Poll) instead of submitting again. Records expire by the
table's TTL (``expires_at``) two days later; nothing else reads them.

(ES|QL names its task only when the submit's inline wait ends, so a death during that wait still
leaves a task to expire; Looker and Veza name it at once.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from query_relay import aws

RECORD_SECONDS = 2 * 24 * 3600


@dataclass(frozen=True)
class StartedTask:
    upstream_id: str
    state: dict[str, Any]
    submitted_at: datetime


def _key(execution_arn: str) -> dict[str, Any]:
    return {"pk": {"S": f"submission#{execution_arn}"}}


def record(table: str, execution_arn: str, job_id: str, task: StartedTask) -> None:
    aws.dynamodb().put_item(
        TableName=table,
        Item={
            **_key(execution_arn),
            "job_id": {"S": job_id},
            "upstream_id": {"S": task.upstream_id},
            "state": {"S": json.dumps(task.state)},
            "submitted_at": {"S": task.submitted_at.isoformat()},
            "expires_at": {"N": str(int(time.time()) + RECORD_SECONDS)},
        },
    )


def find(table: str, execution_arn: str, job_id: str) -> StartedTask | None:
    """The task an earlier Submit of this execution started for this job, if one did."""
    item = aws.dynamodb().get_item(TableName=table, Key=_key(execution_arn), ConsistentRead=True).get("Item")
    if not item or item.get("job_id", {}).get("S") != job_id:
        return None
    return StartedTask(
        upstream_id=item["upstream_id"]["S"],
        state=json.loads(item["state"]["S"]),
        submitted_at=datetime.fromisoformat(item["submitted_at"]["S"]),
    )
