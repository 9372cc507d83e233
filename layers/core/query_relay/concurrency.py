"""Per-connection concurrency: at most ``max_concurrent`` of a connection's jobs run upstream at once.

One item of the control table per connection holds a map of the jobs that hold a slot:
``{"pk": "slots#es-prod", "holders": {"<job_id>": {"execution": <ARN>, "since": <ISO time>}}}``.
Taking a slot is one conditional write (the job is a holder already, or there are fewer holders
than the limit), so two Submits racing for the last slot cannot both win; giving it back removes
the job from the map. Both are idempotent, so a retried Submit or Cleanup is harmless.

A job takes its slot in Submit, before anything is sent upstream, and gives it back once its
result has landed (Fetch, or Submit on the fast path) or in Cleanup (failure, timeout, API cancel,
console stop). A job that finds no free slot is QUEUED: the state machine waits (``WaitForSlot``,
a growing, jittered wait; no Lambda runs meanwhile) and asks again.

A slot whose job ended without giving it back (an execution that hit its own TimeoutSeconds, or a
Cleanup that could not run) would block the connection for good, so a Submit that finds every slot
taken looks at the holders' executions and frees the slots of those no longer running (following
continue-as-new chains, ``query_relay.history``), then asks once more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from query_relay import aws
from query_relay.history import still_running
from query_relay.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import UpdateItemInputTypeDef


@dataclass(frozen=True)
class Slots:
    """The slots of one connection."""

    table: str
    connection: str

    @property
    def _key(self) -> dict[str, Any]:
        return {"pk": {"S": f"slots#{self.connection}"}}

    def acquire(self, job_id: str, execution_arn: str, limit: int) -> bool:
        """Take a slot for ``job_id`` (or confirm it holds one); False when all ``limit`` are taken."""
        if self._try_acquire(job_id, execution_arn, limit):
            return True
        return self._free_stale_slots(job_id) and self._try_acquire(job_id, execution_arn, limit)

    def release(self, job_id: str) -> None:
        """Give the job's slot back (nothing happens if it holds none)."""
        self._remove(job_id, "attribute_exists(holders.#job)", {})

    def holders(self) -> dict[str, str]:
        """job id -> execution ARN of every job holding a slot now."""
        answer = aws.dynamodb().get_item(TableName=self.table, Key=self._key, ConsistentRead=True)
        holders = answer.get("Item", {}).get("holders", {}).get("M", {})
        return {job: value["M"]["execution"]["S"] for job, value in holders.items()}

    # --- internals ---------------------------------------------------------------------------

    def _remove(self, job_id: str, condition: str, values: dict[str, Any]) -> bool:
        """Remove the job from the holders if ``condition`` holds; whether it did."""
        client = aws.dynamodb()
        request: UpdateItemInputTypeDef = {
            "TableName": self.table,
            "Key": self._key,
            "UpdateExpression": "REMOVE holders.#job",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#job": job_id},
        }
        if values:  # DynamoDB refuses an empty ExpressionAttributeValues
            request["ExpressionAttributeValues"] = values
        try:
            client.update_item(**request)
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _try_acquire(self, job_id: str, execution_arn: str, limit: int) -> bool:
        client = aws.dynamodb()
        # The map must exist before a path inside it can be set.
        client.update_item(
            TableName=self.table,
            Key=self._key,
            UpdateExpression="SET holders = if_not_exists(holders, :empty)",
            ExpressionAttributeValues={":empty": {"M": {}}},
        )
        holder = {"execution": {"S": execution_arn}, "since": {"S": datetime.now(UTC).isoformat()}}
        try:
            client.update_item(
                TableName=self.table,
                Key=self._key,
                UpdateExpression="SET holders.#job = if_not_exists(holders.#job, :holder)",
                ConditionExpression="attribute_exists(holders.#job) OR size(holders) < :limit",
                ExpressionAttributeNames={"#job": job_id},
                ExpressionAttributeValues={":holder": {"M": holder}, ":limit": {"N": str(limit)}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _free_stale_slots(self, job_id: str) -> bool:
        """Free the slots of jobs whose executions have ended; whether any was freed."""
        freed = False
        for holder, execution_arn in self.holders().items():
            if holder == job_id or still_running(aws.sfn(), execution_arn):
                continue
            # Only if it still holds the slot through that execution (not released or taken again).
            if not self._remove(
                holder, "holders.#job.execution = :execution", {":execution": {"S": execution_arn}}
            ):
                continue
            logger.warning(
                "freed the slot of a job that ended without giving it back",
                extra={"stale_job_id": holder, "stale_execution": execution_arn},
            )
            freed = True
        return freed
