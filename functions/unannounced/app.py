"""UnannouncedResult Lambda: a door into query_relay.workflow.report_unannounced, for a job whose
result landed but whose "Query Result Ready" event could not be sent (the job still succeeds)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from query_relay import workflow
from query_relay.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return workflow.report_unannounced(event)
