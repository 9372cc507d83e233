"""Fetch Lambda: a door into query_relay.workflow.fetch."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from query_relay import workflow
from query_relay.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return workflow.fetch(event, seconds_left=context.get_remaining_time_in_millis() / 1000)
