"""What can be known before a job starts is checked before it starts, the same way by the CLI,
the API and Submit (``providers.validate_job``): nothing runs, nothing is sent upstream."""

from __future__ import annotations

from typing import Any

import pytest

from query_relay.exceptions import InvalidConnection, InvalidJobSpec
from query_relay.models import parse_connection, parse_job_spec
from query_relay.providers import validate_job

SECRET = "up-front-secret-5c2e91"
QUERIES: dict[str, dict[str, Any]] = {
    "esql": {"query": "FROM employees"},
    "looker": {"query_id": "42"},
    "veza": {"source_node_types": {"nodes": [{"node_type": "OktaUser"}]}},
}
AUTHS: dict[str, dict[str, Any]] = {
    "api_key": {"type": "api_key", "api_key": SECRET},
    "basic": {"type": "basic", "username": "u", "password": SECRET},
    "client_credentials": {"type": "client_credentials", "client_id": "c", "client_secret": SECRET},
}


@pytest.mark.parametrize(
    ("provider", "auth"), [("looker", "api_key"), ("veza", "basic"), ("esql", "client_credentials")]
)
def test_an_auth_type_the_provider_cannot_use_is_refused_before_the_job_starts(
    provider: str, auth: str
) -> None:
    connection = parse_connection(
        "c", {"provider": provider, "base_url": "https://x.example", "auth": AUTHS[auth]}
    )
    with pytest.raises(InvalidConnection, match=f"{provider} connections take") as raised:
        validate_job("c", connection, QUERIES[provider])
    assert SECRET not in str(raised.value)


def test_a_veza_spec_too_big_for_the_job_state_is_refused_up_front() -> None:
    connection = parse_connection(
        "c", {"provider": "veza", "base_url": "https://x.example", "auth": {"type": "bearer", "token": "t"}}
    )
    huge = QUERIES["veza"] | {"properties_to_get": [f"p{n:06d}" for n in range(10_000)]}
    with pytest.raises(InvalidJobSpec, match="bytes"):
        validate_job("c", connection, huge)


@pytest.mark.parametrize(
    ("polling", "field"),
    [
        ({"initial_seconds": True}, "polling.initial_seconds"),
        ({"timeout_seconds": "10"}, "polling.timeout_seconds"),
        ({"max_seconds": 1.5}, "polling.max_seconds"),
    ],
)
def test_numbers_are_numbers(polling: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidJobSpec, match=field):
        parse_job_spec({"connection": "c", "query": {}, "polling": polling})


@pytest.mark.parametrize("value", ["no", 0, "true"])
def test_flags_are_booleans(value: Any) -> None:
    document = {
        "provider": "esql",
        "base_url": "https://x.example",
        "auth": AUTHS["api_key"],
        "verify_tls": value,
    }
    with pytest.raises(InvalidConnection, match="verify_tls"):
        parse_connection("c", document)
