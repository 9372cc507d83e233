"""What reaches the API function without a route (a direct invocation, a proxy in front of it)
answers in the API's error shape, as API Gateway's own answers do (issue 13, "API odds")."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api() -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_function_app", ROOT / "functions/api/app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(method: str, path: str, body: str | None = None, content_type: str = "application/json") -> Any:
    return {
        "httpMethod": method,
        "path": path,
        "resource": path,
        "headers": {"Content-Type": content_type},
        "body": body,
        "isBase64Encoded": False,
        "requestContext": {"requestId": "r-1", "stage": "v1", "httpMethod": method, "path": path},
    }


def _answer(api: ModuleType, event: Any) -> tuple[int, dict[str, Any]]:
    context = SimpleNamespace(
        function_name="api", memory_limit_in_mb=512, aws_request_id="r-1",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:api",
    )  # fmt: skip
    answer = api.lambda_handler(event, context)
    return answer["statusCode"], json.loads(answer["body"])


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nowhere"), ("PUT", "/queries"), ("POST", "/queries/x")]
)
def test_a_method_and_path_no_route_takes_is_404_route_not_found(
    api: ModuleType, method: str, path: str
) -> None:
    status, body = _answer(api, _event(method, path))
    assert (status, body["error"], body["fields"]) == (404, "RouteNotFound", [])


@pytest.mark.parametrize("path", ["/queries/abc\n", "/queries/a\tb", "/schedules/n\r\n", "/queries/\x00"])
def test_a_path_with_a_control_character_reaches_no_route(api: ModuleType, path: str) -> None:
    status, body = _answer(api, _event("GET", path))
    assert (status, body["error"]) == (404, "RouteNotFound")


def test_a_body_that_is_not_json_is_415(api: ModuleType) -> None:
    status, body = _answer(api, _event("POST", "/queries", "<job/>", "application/xml"))
    assert (status, body["error"]) == (415, "UnsupportedMediaType")
