"""ExecutionStopped Lambda: a door into query_relay.api.jobs.on_execution_ended_without_cleanup, for
executions stopped outside the API or timed out (EventBridge "Step Functions Execution Status
Change", status ABORTED or TIMED_OUT): neither runs the machine's Cleanup state."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from query_relay.api import jobs
from query_relay.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    # The request id names this claimant: Lambda keeps it when it retries an asynchronous invocation.
    failure = jobs.on_execution_ended_without_cleanup(
        str(event.detail["executionArn"]),
        str(event.detail["status"]),
        claimant=f"stopped:{context.aws_request_id}",
    )
    return {"cleaned_up": failure is not None, "failure": failure.model_dump() if failure else None}
