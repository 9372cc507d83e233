"""Domain errors -> HTTP answers, in one place: the API handler registers these two functions as
its exception handlers. Bodies are ``ErrorBody``: a stable error name, a message and, for invalid
input, one entry per field."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)

from query_relay.api.exceptions import (
    InvalidPageToken,
    InvalidSchedule,
    JobConflict,
    JobFinished,
    JobNotFound,
    ScheduleConflict,
    ScheduleNotFound,
)
from query_relay.api.models import ErrorBody, FieldProblem
from query_relay.exceptions import ConnectionNotFound, InvalidConnection, InvalidJobSpec, QueryRelayError
from query_relay.models import problem_message
from query_relay.observability import logger

STATUS_OF: Mapping[type[QueryRelayError], HTTPStatus] = {
    InvalidJobSpec: HTTPStatus.BAD_REQUEST,
    InvalidSchedule: HTTPStatus.BAD_REQUEST,
    InvalidPageToken: HTTPStatus.BAD_REQUEST,
    ConnectionNotFound: HTTPStatus.NOT_FOUND,
    JobNotFound: HTTPStatus.NOT_FOUND,
    ScheduleNotFound: HTTPStatus.NOT_FOUND,
    JobConflict: HTTPStatus.CONFLICT,
    JobFinished: HTTPStatus.CONFLICT,
    ScheduleConflict: HTTPStatus.CONFLICT,
    # The stored connection is broken: the operator's problem, not the caller's.
    InvalidConnection: HTTPStatus.INTERNAL_SERVER_ERROR,
}
# "invalid job spec: output.format: Input should be ...; query.x: ..." -> one problem per field.
_FIELD_PROBLEM = re.compile(r"(?P<field>[\w.\[\]-]+|\(root\)): (?P<message>[^;]+)")


def domain_error_response(error: QueryRelayError) -> Response[str]:
    status = next(
        (code for kind, code in STATUS_OF.items() if isinstance(error, kind)), HTTPStatus.BAD_GATEWAY
    )
    fields: list[FieldProblem] = []
    if isinstance(error, InvalidSchedule):
        fields = [FieldProblem(field=error.field, message=error.reason)]
    elif isinstance(error, InvalidPageToken):
        fields = [FieldProblem(field="next_token", message=error.message)]
    elif isinstance(error, InvalidJobSpec):
        fields = _field_problems(error.message)
    log = logger.error if status >= HTTPStatus.INTERNAL_SERVER_ERROR else logger.info
    log("request refused", extra={"error": type(error).__name__, "status": int(status)})
    return _answer(status, ErrorBody(error=type(error).__name__, message=error.message, fields=fields))


NO_ROUTE = "no route takes this method and path (see GET /openapi.json)"


def route_not_found_response(_: Exception) -> Response[str]:
    """404 for a path, or a method on it, that no route takes (API Gateway answers those itself
    in AWS, in the same shape: template.yaml's GatewayResponses)."""
    return _answer(HTTPStatus.NOT_FOUND, ErrorBody(error="RouteNotFound", message=NO_ROUTE, fields=[]))


def unsupported_media_type_response(
    _: RequestUnsupportedContentType | RequestValidationError,
) -> Response[str]:
    message = "the body must be JSON (Content-Type: application/json)"
    problem = FieldProblem(field="Content-Type", message=message)
    body = ErrorBody(error="UnsupportedMediaType", message=message, fields=[problem])
    return _answer(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, body)


def validation_error_response(error: RequestValidationError) -> Response[str]:
    """Malformed JSON, wrong types, unknown fields: 400 naming each field (never echoing input)."""
    problems = [_problem(raw) for raw in error.errors()]
    message = "; ".join(f"{problem.field}: {problem.message}" for problem in problems)
    body = ErrorBody(error="InvalidRequest", message=message or "invalid request", fields=problems)
    return _answer(HTTPStatus.BAD_REQUEST, body)


def _problem(raw: Mapping[str, Any]) -> FieldProblem:
    location: Sequence[Any] = raw.get("loc") or ()
    if raw.get("type") == "json_invalid":
        return FieldProblem(field="body", message=f"not valid JSON ({raw.get('ctx', {}).get('error', '')})")
    # ("body", "output", "format") -> "output.format"; ("query", "limit") -> "limit"
    parts = [str(part) for part in location[1:]] if len(location) > 1 else [str(p) for p in location]
    return FieldProblem(field=".".join(parts) or "body", message=problem_message(raw))


def _field_problems(message: str) -> list[FieldProblem]:
    _, _, details = message.partition(": ")
    return [
        FieldProblem(field=match["field"], message=match["message"].strip())
        for match in _FIELD_PROBLEM.finditer(details)
    ]


def _answer(status: HTTPStatus, body: ErrorBody) -> Response[str]:
    return Response(status_code=int(status), content_type="application/json", body=body.model_dump_json())
