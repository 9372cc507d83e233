"""What every route shares: domain errors -> HTTP answers (one place) and the OpenAPI document."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from query_relay.api import errors
from query_relay.api.models import ErrorBody, FieldProblem
from query_relay.exceptions import QueryRelayError
from query_relay.models import MAX_NESTING, too_deep
from query_relay.observability import logger, metrics, tracer

TITLE = "query-relay"
VERSION = "1"
# A job spec or schedule is a few KiB; anything this big is a mistake or an attack, refused before
# it is parsed (API Gateway itself lets up to 10 MB through).
MAX_BODY_BYTES = 256 * 1024


def configure(app: APIGatewayRestResolver) -> APIGatewayRestResolver:
    app.exception_handler(QueryRelayError)(errors.domain_error_response)
    app.exception_handler(RequestUnsupportedContentType)(errors.unsupported_media_type_response)

    def invalid_request(error: RequestValidationError) -> Response[str]:
        # Powertools reads a form body as fields: every name it holds would come back as unknown.
        content_type = app.current_event.headers.get("content-type") or "application/json"
        if not content_type.lower().startswith("application/json"):
            return errors.unsupported_media_type_response(error)
        return errors.validation_error_response(error)

    app.exception_handler(RequestValidationError)(invalid_request)
    app.not_found(errors.route_not_found_response)

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
    """The Lambda entry point: the app with Powertools logging, tracing and metrics around it.

    Every line carries API Gateway's request id as ``request_id``; it is the correlation id too,
    until a route finds the job the request is about: from there on the job id is
    (``observability.log_job``), as in every other function's lines about that job. A request the
    app answers ends with one line "answered", its method and status (not its path, which holds
    whatever id was asked for)."""

    @logger.inject_lambda_context(clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_REST)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        logger.append_keys(request_id=logger.get_correlation_id())
        for refusal in (unroutable_path_response, oversize_body_response, too_deep_body_response):
            refused = refusal(event)
            if refused is not None:
                return refused
        answer = app.resolve(event, context)
        logger.info("answered", extra={"method": event.get("httpMethod"), "status": answer.get("statusCode")})
        return answer

    return lambda_handler


# A control character in a decoded path: Powertools' route patterns end in "$", which lets a
# trailing newline through ("/queries/abc\n" would answer for job "abc").
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def unroutable_path_response(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """404 RouteNotFound for a path holding a control character (None otherwise): no route,
    and no path parameter, may hold one."""
    if not _CONTROL.search(str(event.get("path") or "")):
        return None
    return _refusal(HTTPStatus.NOT_FOUND, "RouteNotFound", errors.NO_ROUTE, field="path")


def body_size(event: Mapping[str, Any]) -> int:
    """The request body's size in bytes, as the caller sent it (base64 decoded where encoded)."""
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return len(str(body).encode("utf-8"))
    try:
        return len(base64.b64decode(str(body), validate=False))
    except (binascii.Error, ValueError):
        return len(str(body))


def too_deep_body_response(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """400 naming the body when it nests deeper than MAX_NESTING (None otherwise, or when it is no
    JSON at all, which the app refuses itself): refused before validation recurses on it."""
    body = event.get("body")
    if not body or event.get("isBase64Encoded"):
        return None
    try:
        deep = too_deep(json.loads(body)) is not None
    except RecursionError:
        deep = True
    except ValueError:
        return None
    if not deep:
        return None
    message = f"the request body nests deeper than {MAX_NESTING} levels"
    return _refusal(HTTPStatus.BAD_REQUEST, "InvalidRequest", message)


def oversize_body_response(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """413 naming the body when it is over MAX_BODY_BYTES (None otherwise): refused before any
    JSON parsing or validation spends time and memory on it."""
    size = body_size(event)
    if size <= MAX_BODY_BYTES:
        return None
    message = f"the request body is {size} bytes; at most {MAX_BODY_BYTES} are accepted"
    return _refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "RequestTooLarge", message)


def _refusal(status: HTTPStatus, error: str, message: str, field: str = "body") -> dict[str, Any]:
    """An answer in our ErrorBody shape naming ``field``, given before the app sees the request."""
    body = ErrorBody(error=error, message=message, fields=[FieldProblem(field=field, message=message)])
    logger.info("request refused", extra={"error": error, "status": int(status)})
    return {
        "statusCode": int(status),
        "headers": {"Content-Type": "application/json"},
        "body": body.model_dump_json(),
        "isBase64Encoded": False,
    }
