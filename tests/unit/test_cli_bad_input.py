"""Bad input to ``query-relay run``, table-driven: exit status 2, the file and the field named on
stderr, nothing on stdout, no secret echoed, and the local stack never started."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from query_relay.limits import JOB_SPEC_MAX_BYTES
from query_relay_local import cli
from query_relay_local.stack import LocalStack

SECRET = "cli-bad-input-secret-0d4e7a"
CONNECTION = {
    "provider": "esql",
    "base_url": "http://127.0.0.1:9200",
    "auth": {"type": "api_key", "api_key": SECRET},
}
SPEC = {"connection": "es-local", "query": {"query": "FROM employees | LIMIT 3"}}


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: LocalStack) -> LocalStack:
        raise AssertionError("the local stack was started despite bad input")

    monkeypatch.setattr(LocalStack, "start", refuse)


def text(document: Any) -> str:
    return json.dumps(document)


@pytest.mark.parametrize(
    ("spec", "connection", "named"),
    [
        ('{"connection": "es-local", "query": {', CONNECTION, "not valid JSON"),
        ("[1, 2]", CONNECTION, "must be a JSON object"),
        ("", CONNECTION, "not valid JSON"),
        (text(SPEC | {"query": "FROM employees"}), CONNECTION, "query:"),
        (text(SPEC | {"connection": 7}), CONNECTION, "connection:"),
        (text(SPEC | {"polling": {"initial_seconds": "soon"}}), CONNECTION, "polling.initial_seconds:"),
        (text(SPEC | {"output": {"format": "parquet"}}), CONNECTION, "output.format:"),
        (text(SPEC | {"priority": "high"}), CONNECTION, "priority:"),
        (text(SPEC | {"job_id": "../etc/passwd"}), CONNECTION, "job_id:"),
        (text(SPEC | {"job_id": "x" * 81}), CONNECTION, "job_id:"),
        (text(SPEC | {"job_id": "has space"}), CONNECTION, "job_id:"),
        (text(SPEC | {"query": {"query": "FROM x", "limit": 3}}), CONNECTION, "query.limit"),
        (text(SPEC | {"query": {"query": "FROM x //" + "x" * JOB_SPEC_MAX_BYTES}}), CONNECTION, "query: the"),
        (text(SPEC), CONNECTION | {"base_url": "gopher://x"}, "base_url:"),
        (text(SPEC), CONNECTION | {"allow_private_network": "maybe"}, "allow_private_network:"),
        (text(SPEC), CONNECTION | {"timeout_seconds": -1}, "timeout_seconds:"),
        (text(SPEC), CONNECTION | {"token": SECRET}, "token:"),
        (text(SPEC), CONNECTION | {"auth": {"type": "api_key", "key": SECRET}}, "auth.api_key"),
    ],
    ids=[
        "spec-malformed", "spec-not-object", "spec-empty", "spec-query-type", "spec-connection-type",
        "spec-polling-type", "spec-format", "spec-unknown-field", "spec-job-id-path", "spec-job-id-long",
        "spec-job-id-space", "spec-unknown-query-field", "spec-too-big-for-step-functions",
        "connection-scheme", "connection-flag-type", "connection-timeout", "connection-unknown-field",
        "connection-auth-field",
    ],
)  # fmt: skip
def test_bad_input_exits_2_naming_the_field_and_never_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, connection: dict[str, Any], named: str
) -> None:
    # Given a spec file and a connections file, one of them bad
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec)
    connections = tmp_path / "connections.json"
    connections.write_text(json.dumps({"es-local": connection}))
    # When the job is run
    status = cli.main(["run", str(spec_path), "--connections", str(connections)])
    # Then the CLI exits 2 naming the file and the field, and shows no secret
    captured = capsys.readouterr()
    assert status == cli.EXIT_USAGE
    assert captured.out == ""
    assert named in captured.err
    assert str(tmp_path) in captured.err
    assert SECRET not in captured.err
