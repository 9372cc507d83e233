"""One cleanup per execution, however it stops: a claim in the control table.

An execution that fails is cleaned up by the machine's Cleanup state; one cancelled through the
API by the API; one stopped elsewhere (the console, the CLI) or past its own TimeoutSeconds by the
ExecutionStoppedFunction. These can race: five DELETEs of one job at once, a DELETE while the job
fails on its own, a console stop while a DELETE runs, a status-change event delivered twice. So
whoever is about to clean up first claims the execution with one conditional write,
``{"pk": "cleanup#<execution ARN>", "claimant", "error", "cause", "claimed_at", "expires_at"}``
(PutItem if ``attribute_not_exists(pk)``). Only the claimant cancels the upstream task, drops
partial output, gives back the slot and sends "Query Failed", under the error and cause it claimed
with; everyone else leaves the execution alone. A claimant that runs again finds its own claim and
finishes: the Cleanup state of an execution claims as ``state-machine`` (an execution runs one
Cleanup at a time, so a retried one is the same claimant), the stop handler under its Lambda
request id (which an asynchronous invocation keeps across Lambda's retries; a second delivery of
the event is a new request and loses). Claims expire by the table's TTL two days later, long after
the last status-change event could arrive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from query_relay import aws

CLAIM_SECONDS = 2 * 24 * 3600
# The machine's own Cleanup state: the one claimant an execution's Cleanup retries share.
MACHINE_CLAIMANT = "state-machine"


@dataclass(frozen=True)
class Claim:
    """Who cleans up after an execution, and the error and cause its "Query Failed" carries."""

    claimant: str
    error: str
    cause: str


def _key(execution_arn: str) -> dict[str, Any]:
    return {"pk": {"S": f"cleanup#{execution_arn}"}}


def claim_cleanup(table: str | None, execution_arn: str, claim: Claim) -> Claim:
    """Claim the cleanup of an execution; the claim that holds afterwards: ``claim`` when it was
    first (or its claimant had claimed before), else the one taken first. Without a control table
    there is nobody to race with, and ``claim`` holds."""
    if table is None:
        return claim
    client = aws.dynamodb()
    try:
        client.put_item(
            TableName=table,
            Item={
                **_key(execution_arn),
                "claimant": {"S": claim.claimant},
                "error": {"S": claim.error},
                "cause": {"S": claim.cause},
                "claimed_at": {"S": datetime.now(UTC).isoformat()},
                "expires_at": {"N": str(int(time.time()) + CLAIM_SECONDS)},
            },
            ConditionExpression="attribute_not_exists(pk) OR claimant = :claimant",
            ExpressionAttributeValues={":claimant": {"S": claim.claimant}},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except client.exceptions.ConditionalCheckFailedException as refused:
        held: dict[str, Any] = refused.response.get("Item", {})  # type: ignore[assignment]
        return Claim(
            claimant=held.get("claimant", {}).get("S", ""),
            error=held.get("error", {}).get("S", ""),
            cause=held.get("cause", {}).get("S", ""),
        )
    return claim


def cleanup_claimed(table: str | None, execution_arn: str | None) -> bool:
    """Whether someone has claimed the cleanup of this execution: it is failing or being
    cancelled, and what a step lands from now on must not stay (a strongly consistent read, so a
    claim taken before an object was written is seen after it)."""
    if table is None or execution_arn is None:
        return False
    found = aws.dynamodb().get_item(TableName=table, Key=_key(execution_arn), ConsistentRead=True)
    return "Item" in found
