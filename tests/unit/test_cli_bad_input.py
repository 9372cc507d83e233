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
# 100 levels: past query-relay's 64, well within what the json module can read.
NESTED: dict[str, Any] = {}
for _ in range(100):
    NESTED = {"bool": NESTED}
CLIENT_CREDENTIALS = {"type": "client_credentials", "client_id": "c", "client_secret": SECRET}
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
        (text(SPEC | {"output": {"format": "orc"}}), CONNECTION, "output.format:"),
        (text(SPEC | {"output": {"prefix": "a/./b/"}}), CONNECTION, "output.prefix:"),
        (text(SPEC | {"query": {"query": "FROM x", "filter": NESTED}}), CONNECTION, "nested deeper than"),
        ("[" * 100_000, CONNECTION, "nested too deeply"),
        (text(SPEC), CONNECTION | {"auth": NESTED}, "nested deeper than"),
        (text(SPEC | {"output": {"prefix": "a//b/"}}), CONNECTION, "output.prefix:"),
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
        (text(SPEC | {"polling": {"initial_seconds": True}}), CONNECTION, "polling.initial_seconds:"),
        (text(SPEC | {"polling": {"timeout_seconds": "10"}}), CONNECTION, "polling.timeout_seconds:"),
        (text(SPEC), CONNECTION | {"verify_tls": "no"}, "verify_tls:"),
        (text(SPEC), CONNECTION | {"auth": {"type": "api_key", "api_key": ""}}, "auth.api_key"),
        (text(SPEC), CONNECTION | {"auth": CLIENT_CREDENTIALS}, "esql connections take"),
        (text(SPEC), CONNECTION | {"base_url": "http://127.0.0.1:99999"}, "base_url:"),
        (text(SPEC), CONNECTION | {"base_url": "http://0177.0.0.1"}, "base_url:"),
        (text(SPEC), CONNECTION | {"base_url": "https://\u24d4\u24e2.example"}, "base_url:"),
        (text(SPEC), CONNECTION | {"base_url": f"https://elastic:{SECRET}@es.example"}, "base_url:"),
    ],
    ids=[
        "spec-malformed", "spec-not-object", "spec-empty", "spec-query-type", "spec-connection-type",
        "spec-polling-type", "spec-format", "spec-prefix-dot", "spec-prefix-empty-segment",
        "spec-nested-deep", "spec-nested-past-the-parser", "connection-nested-deep",
        "spec-unknown-field", "spec-job-id-path", "spec-job-id-long",
        "spec-job-id-space", "spec-unknown-query-field", "spec-too-big-for-step-functions",
        "connection-scheme", "connection-flag-type", "connection-timeout", "connection-unknown-field",
        "connection-auth-field", "spec-bool-for-number", "spec-string-for-number",
        "connection-string-for-bool", "connection-empty-api-key", "connection-auth-type-for-provider",
        "connection-port", "connection-octal-host", "connection-circled-host",
        "connection-credentials-in-url",
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


@pytest.mark.parametrize("command", ["run", "demo"])
def test_an_out_that_is_a_file_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # Given a good spec and connection, and --out naming an existing file (or a path below one)
    (tmp_path / "spec.json").write_text(text(SPEC))
    (tmp_path / "connections.json").write_text(json.dumps({"es-local": CONNECTION}))
    (tmp_path / "results").write_text("not a directory")
    for out in (tmp_path / "results", tmp_path / "results" / "below"):
        argv = ["run", str(tmp_path / "spec.json"), "--connections", str(tmp_path / "connections.json")]
        # When the job (or the demo) is run
        status = cli.main([*(argv if command == "run" else ["demo"]), "--out", str(out)])
        # Then it exits 2 naming --out, and the stack never started (nothing_starts)
        captured = capsys.readouterr()
        assert status == cli.EXIT_USAGE
        assert "--out" in captured.err
        assert "is not a directory" in captured.err
