"""``query-relay serve``: the HTTP API of template.yaml on the local stack, like API Gateway.

A werkzeug server turns each HTTP request into an API Gateway REST proxy event, invokes the
template's API function in process through the local stack (the same real handler Lambda runs)
and turns its answer back into HTTP. As API Gateway does, it answers a method and path the
template routes nowhere itself (403 ``MISSING_AUTHENTICATION_TOKEN``, in the body the template's
``GatewayResponses`` give ``DEFAULT_4XX``): the function never sees it. IAM auth is not checked
locally. Presigned links in the
answers point at the stack's moto endpoint, so curl and browsers can follow them.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from query_relay_local.template import decode_template

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from query_relay_local.stack import LocalStack

logger = logging.getLogger(__name__)

API_FUNCTION = "ApiFunction"
STAGE = "v1"
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-ndjson")


class LocalApiGateway:
    """WSGI app: HTTP request -> REST proxy event -> the API function -> HTTP response."""

    def __init__(self, stack: LocalStack, function_name: str = API_FUNCTION) -> None:
        self.stack = stack
        self.function_name = function_name
        document = decode_template(stack.template.path)
        self._routes = api_routes(document, function_name)
        self._no_route = gateway_response_template(document)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        if not any(
            method == request.method and path.fullmatch(request.path) for method, path in self._routes
        ):
            return self._missing_authentication_token()(environ, start_response)
        result = self.stack.invoke(self.function_name, rest_proxy_event(request))
        answer = json.loads(result.payload or b"null")
        if result.function_error or not isinstance(answer, dict) or "statusCode" not in answer:
            # What API Gateway answers when the integration fails.
            logger.warning("the API function failed: %s", answer)
            response = Response(
                json.dumps({"message": "Internal server error"}), 502, content_type="application/json"
            )
        else:
            response = proxy_response(answer)
        return response(environ, start_response)

    def _missing_authentication_token(self) -> Response:
        """API Gateway's answer to a method and path no resource of the API takes."""
        body = self._no_route.replace("$context.error.responseType", "MISSING_AUTHENTICATION_TOKEN")
        body = body.replace("$context.error.messageString", json.dumps("Missing Authentication Token"))
        response = Response(body, 403, content_type="application/json")
        response.headers["x-amzn-ErrorType"] = "MissingAuthenticationTokenException"
        return response


def api_routes(document: dict[str, Any], function_name: str) -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) for each Api event of the function: ``{name}`` takes one segment,
    ``{name+}`` the rest of the path."""
    events = (document["Resources"][function_name].get("Properties") or {}).get("Events") or {}
    routes = []
    for event in events.values():
        if event.get("Type") != "Api":
            continue
        properties = event["Properties"]
        pieces = re.split(r"(\{[^}]+\})", str(properties["Path"]))
        pattern = "".join(
            (".+" if piece.endswith("+}") else "[^/]+") if piece.startswith("{") else re.escape(piece)
            for piece in pieces
        )
        routes.append((str(properties["Method"]).upper(), re.compile(pattern)))
    return routes


def gateway_response_template(document: dict[str, Any]) -> str:
    """The body the template's REST API gives API Gateway's own 4xx answers (its default otherwise)."""
    for resource in document["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Api":
            responses = (resource.get("Properties") or {}).get("GatewayResponses") or {}
            templates = (responses.get("DEFAULT_4XX") or {}).get("ResponseTemplates") or {}
            if "application/json" in templates:
                return str(templates["application/json"])
    return '{"message": $context.error.messageString}'


def rest_proxy_event(request: Request) -> dict[str, Any]:
    """The event API Gateway (REST API, Lambda proxy integration) sends for this request."""
    body = request.get_data()
    is_text = not body or any(request.mimetype.startswith(kind) for kind in _TEXT_TYPES)
    multi_query = {name: request.args.getlist(name) for name in request.args}
    headers = dict(request.headers.items())
    now = datetime.now(UTC)
    return {
        "resource": request.path,
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": {name: request.headers.getlist(name) for name in headers},
        "queryStringParameters": {name: values[-1] for name, values in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": request.path,
            "httpMethod": request.method,
            "path": f"/{STAGE}{request.path}",
            "stage": STAGE,
            "requestId": str(uuid.uuid4()),
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "accountId": "123456789012",
            "apiId": "local",
            "protocol": request.environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
            "identity": {
                "sourceIp": request.remote_addr or "127.0.0.1",
                "userAgent": request.user_agent.string,
            },
        },
        "body": (body.decode("utf-8", "replace") if is_text else base64.b64encode(body).decode())
        if body
        else None,
        "isBase64Encoded": bool(body) and not is_text,
    }


def proxy_response(answer: dict[str, Any]) -> Response:
    body = answer.get("body") or ""
    data = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode()
    response = Response(data, status=int(answer["statusCode"]))
    response.headers.clear()
    for name, values in (answer.get("multiValueHeaders") or {}).items():
        for value in values:
            response.headers.add(name, str(value))
    for name, value in (answer.get("headers") or {}).items():
        response.headers[name] = str(value)
    return response


class LocalApiServer:
    """The local API on ``host:port`` (0: a free port) in a background thread; a context manager."""

    def __init__(self, stack: LocalStack, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = make_server(host, port, LocalApiGateway(stack), threaded=True)
        self._thread: threading.Thread | None = None
        self.host, self.port = host, self._server.server_port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="local-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(stack: LocalStack, host: str, port: int) -> None:  # pragma: no cover - interactive
    with LocalApiServer(stack, host, port) as server:
        print(f"query-relay API at {server.base_url} (local stack at {stack.endpoint_url}); Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped")
