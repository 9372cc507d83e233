"""X-Ray tracing is opt-in (template parameter ``Tracing``): without it no handler imports the X-Ray
SDK, which Powertools' Tracer imports as it is created, even disabled (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.template.test_template import load_template

ROOT = Path(__file__).resolve().parents[2]
# Import a handler as Lambda does, then say what its tracer is and whether the X-Ray SDK was loaded.
_PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from query_relay.observability import tracer
print(json.dumps({"tracer": type(tracer).__name__, "xray": "aws_xray_sdk.core" in sys.modules}))
"""


def _probe(handler: str, tracing: str | None) -> dict[str, object]:
    environment = {key: value for key, value in os.environ.items() if key != "QUERY_RELAY_TRACING"}
    environment |= {
        "PYTHONPATH": str(ROOT / "layers/core"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "query-relay",
    }
    if tracing is not None:
        environment["QUERY_RELAY_TRACING"] = tracing
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT / "functions" / handler / "app.py")],
        capture_output=True, text=True, check=True, env=environment,
    )  # fmt: skip
    answer: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return answer


@pytest.mark.parametrize("tracing", [None, "PassThrough"])
def test_without_tracing_no_handler_imports_the_xray_sdk(tracing: str | None) -> None:
    for handler in ("submit", "poll", "fetch", "cleanup"):
        assert _probe(handler, tracing) == {"tracer": "Untraced", "xray": False}, handler


def test_with_tracing_the_handlers_are_traced_by_powertools() -> None:
    assert _probe("poll", "Active") == {"tracer": "Tracer", "xray": True}


def test_one_parameter_turns_tracing_on_everywhere() -> None:
    template = load_template()
    parameter = template["Parameters"]["Tracing"]
    assert parameter["Default"] == "PassThrough"
    assert parameter["AllowedValues"] == ["PassThrough", "Active"]
    assert template["Conditions"]["TracingActive"] == {"Fn::Equals": [{"Ref": "Tracing"}, "Active"]}
    function = template["Globals"]["Function"]
    assert function["Tracing"] == {"Ref": "Tracing"}
    assert function["Environment"]["Variables"]["QUERY_RELAY_TRACING"] == {"Ref": "Tracing"}
    on_when_active = {"Fn::If": ["TracingActive", True, False]}
    resources = template["Resources"]
    assert resources["QueryStateMachine"]["Properties"]["Tracing"] == {"Enabled": on_when_active}
    assert resources["QueryApi"]["Properties"]["TracingEnabled"] == on_when_active
    for name, resource in resources.items():  # no function traces on its own
        if resource["Type"] == "AWS::Serverless::Function":
            assert "Tracing" not in resource.get("Properties", {}), name
