"""Job spec and connection validation: bad input is named precisely and never echoes secrets."""

from __future__ import annotations

from typing import Any

import pytest

from query_relay.exceptions import InvalidConnection, InvalidJobSpec
from query_relay.models import parse_connection, parse_job_spec
from query_relay.providers import validate_query


def a_spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"connection": "es-prod", "query": {"query": "FROM employees | LIMIT 5"}}
    spec.update(changes)
    return spec


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_job_spec(a_spec())
    assert spec.job_id is None
    assert (spec.output.format, spec.output.compression, spec.output.prefix) == ("jsonl", "none", "results/")
    assert (spec.polling.initial_seconds, spec.polling.max_seconds, spec.polling.timeout_seconds) == (
        1,
        60,
        3600,
    )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"colour": "blue"}, "colour"),
        ({"output": {"format": "orc"}}, "output.format"),
        ({"output": {"compression": "zstd"}}, "output.compression"),
        ({"output": {"prefix": "/abs/"}}, "output.prefix"),
        ({"output": {"prefix": "a/../b/"}}, "output.prefix"),
        ({"output": {"fromat": "csv"}}, "output.fromat"),
        ({"polling": {"initial_seconds": 0}}, "polling.initial_seconds"),
        ({"polling": {"initial_seconds": 10, "max_seconds": 5}}, "polling"),
        ({"job_id": "has space"}, "job_id"),
        ({"job_id": "x" * 81}, "job_id"),
        ({"connection": ""}, "connection"),
    ],
)
def test_an_invalid_spec_is_rejected_naming_the_field(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidJobSpec) as raised:
        parse_job_spec(a_spec(**changes))
    assert named in str(raised.value)


def test_a_missing_query_is_named() -> None:
    with pytest.raises(InvalidJobSpec, match="query: Field required"):
        parse_job_spec({"connection": "es"})


def test_an_unknown_field_in_the_esql_query_is_named_with_its_path() -> None:
    with pytest.raises(InvalidJobSpec, match=r"query\.keep_alive"):
        validate_query("esql", {"query": "FROM x", "keep_alive": "1d"})


def test_prefix_gets_a_trailing_slash() -> None:
    assert parse_job_spec(a_spec(output={"prefix": "team/exports"})).output.prefix == "team/exports/"


def test_connections_hide_their_secrets_in_repr_and_errors() -> None:
    connection = parse_connection(
        "es",
        {
            "provider": "esql",
            "base_url": "https://es.example:9243/",
            "auth": {"type": "api_key", "api_key": "s3cr3t-key"},
        },
    )
    assert connection.base_url == "https://es.example:9243"
    assert "s3cr3t-key" not in repr(connection)
    assert "s3cr3t-key" not in str(connection.model_dump())

    with pytest.raises(InvalidConnection) as raised:
        parse_connection(
            "es",
            {
                "provider": "esql",
                "base_url": "ftp://x",
                "auth": {"type": "basic", "username": "u", "password": "pw-123456"},
            },
        )
    assert "base_url" in str(raised.value)
    assert "pw-123456" not in str(raised.value)


@pytest.mark.parametrize(
    ("document", "named"),
    [
        (
            {"provider": "mysql", "base_url": "https://x", "auth": {"type": "bearer", "token": "t"}},
            "provider",
        ),
        ({"provider": "esql", "base_url": "https://x", "auth": {"type": "magic", "token": "t"}}, "auth"),
        ({"provider": "esql", "base_url": "https://x", "auth": {"type": "bearer"}}, "auth.bearer.token"),
        (
            {
                "provider": "esql",
                "base_url": "https://x",
                "auth": {"type": "bearer", "token": "t"},
                "max_concurrent": 0,
            },
            "max_concurrent",
        ),
        (
            {
                "provider": "esql",
                "base_url": "https://x",
                "auth": {"type": "bearer", "token": "t"},
                "extra": 1,
            },
            "extra",
        ),
    ],
)
def test_an_invalid_connection_is_rejected_naming_the_field(document: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidConnection) as raised:
        parse_connection("c", document)
    assert named in str(raised.value)
