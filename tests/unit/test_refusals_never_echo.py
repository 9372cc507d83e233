"""A refusal names the field and the rule, never the rejected value (issue 13: an ``auth.type``
that was a secret pasted in the wrong field came back whole in the message)."""

from __future__ import annotations

from typing import Any

import pytest

from query_relay.exceptions import InvalidConnection, InvalidJobSpec
from query_relay.models import parse_connection, parse_job_spec

MARKER = "sk-live-7f3a9c1e-not-for-logs"
CONNECTION: dict[str, Any] = {
    "provider": "esql",
    "base_url": "https://es.example",
    "auth": {"type": "api_key", "api_key": "k"},
}
SPEC: dict[str, Any] = {"connection": "c", "query": {"query": "FROM x"}}


@pytest.mark.parametrize(
    "document",
    [
        CONNECTION | {"auth": {"type": MARKER, "api_key": "k"}},
        CONNECTION | {"provider": MARKER},
        CONNECTION | {"verify_tls": MARKER},
        CONNECTION | {"timeout_seconds": MARKER},
        CONNECTION | {"auth": {"type": "basic", "username": MARKER}},
    ],
    ids=["auth-type", "provider", "verify-tls", "timeout", "basic-without-password"],
)
def test_a_refused_connection_never_repeats_the_value(document: dict[str, Any]) -> None:
    with pytest.raises(InvalidConnection) as raised:
        parse_connection("c", document)
    assert MARKER not in str(raised.value)


@pytest.mark.parametrize(
    "document",
    [
        SPEC | {"output": {"format": MARKER}},
        SPEC | {"polling": {"timeout_seconds": MARKER}},
        SPEC | {"job_id": MARKER + "/x"},
        SPEC | {"connection": 42, "query": {"query": "FROM x"}, "output": {"compression": MARKER}},
    ],
    ids=["format", "timeout", "job-id", "compression"],
)
def test_a_refused_spec_never_repeats_the_value(document: dict[str, Any]) -> None:
    with pytest.raises(InvalidJobSpec) as raised:
        parse_job_spec(document)
    assert MARKER not in str(raised.value)


def test_the_refusal_still_names_the_field_and_the_choices() -> None:
    with pytest.raises(InvalidConnection) as raised:
        parse_connection("c", CONNECTION | {"auth": {"type": MARKER, "api_key": "k"}})
    assert "auth: must be one of 'api_key', 'basic', 'bearer', 'client_credentials'" in str(raised.value)
