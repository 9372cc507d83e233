"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis): whatever a
caller sends, valid or not, the API answers 2xx or 4xx, never 5xx.

The API runs as `query-relay serve` runs it (the WSGI gateway in front of the real API handler on
the local stack), called in process; examples are bounded so the whole run takes seconds."""

from __future__ import annotations

from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.core.result import Ok

from query_relay_local.api_server import LocalApiGateway
from query_relay_local.stack import LocalStack

EXAMPLES_PER_OPERATION = 40
# Valid requests, and requests that break the document on purpose (wrong types, missing fields).
NEGATIVE = schemathesis.GenerationMode.NEGATIVE
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,  # no .hypothesis directory in the work tree; the seed below keeps runs repeatable
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def test_no_request_generated_from_the_openapi_document_gets_a_5xx(stack: LocalStack) -> None:
    # Given the API's own OpenAPI document, as the API serves it
    schema = schemathesis.openapi.from_wsgi("/openapi.json", LocalApiGateway(stack))
    loaded = list(schema.get_all_operations())
    operations = [result.ok() for result in loaded if isinstance(result, Ok)]
    assert len(operations) == len(loaded)  # the document is one schemathesis can read whole
    assert len(operations) >= 8  # every route is described (test_api.py checks which)
    server_errors: list[str] = []

    for operation in operations:

        @FUZZ_SETTINGS
        @given(case=operation.as_strategy() | operation.as_strategy(generation_mode=NEGATIVE))
        def call(case: schemathesis.Case[Any]) -> None:
            # When a generated request (valid or deliberately invalid) is sent
            response = case.call()
            # Then it is never a server error
            if response.status_code >= 500:
                server_errors.append(
                    f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r:.200} "
                    f"-> {response.status_code}: {response.text[:200]}"
                )

        call()

    assert not server_errors, "\n".join(sorted(set(server_errors)))
