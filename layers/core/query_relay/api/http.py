"""What every route shares: domain errors -> HTTP answers (one place) and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.typing import LambdaContext

from query_relay.api import errors
from query_relay.exceptions import QueryRelayError
from query_relay.observability import logger, metrics, tracer

TITLE = "query-relay"
VERSION = "1"


def configure(app: APIGatewayRestResolver) -> APIGatewayRestResolver:
    app.exception_handler(QueryRelayError)(errors.domain_error_response)
    app.exception_handler(RequestValidationError)(errors.validation_error_response)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document() -> Response[str]:
        document = app.get_openapi_json_schema(
            title=TITLE,
            version=VERSION,
            description="Run long asynchronous queries and land their results in S3 (IAM auth).",
        )
        return Response(200, "application/json", document)

    return app


def lambda_handler_of(
    app: APIGatewayRestResolver,
) -> Callable[[dict[str, Any], LambdaContext], dict[str, Any]]:
    """The Lambda entry point: the app with Powertools logging (request id as correlation id),
    tracing and metrics around it."""

    @logger.inject_lambda_context(clear_state=True, correlation_id_path="requestContext.requestId")
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        return app.resolve(event, context)

    return lambda_handler
