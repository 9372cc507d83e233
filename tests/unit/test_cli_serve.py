"""`query-relay serve` refuses a bad connections file before starting anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from query_relay_local.cli import EXIT_USAGE, main


def test_serve_with_a_missing_connections_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.json"
    assert main(["serve", "--port", "0", "--connections", str(missing)]) == EXIT_USAGE
    assert "nope.json" in capsys.readouterr().err


def test_serve_with_an_invalid_connection_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connections = tmp_path / "connections.json"
    auth = {"type": "bearer", "token": "secret-token-7f3a"}
    connections.write_text(json.dumps({"es": {"provider": "esql", "base_url": "ftp://x", "auth": auth}}))
    assert main(["serve", "--port", "0", "--connections", str(connections)]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert "base_url" in error
    assert "secret-token-7f3a" not in error


def test_serve_refuses_a_catalog_database_athena_could_not_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "0", "--catalog-database", "Analytics-DB"])
    assert exited.value.code == EXIT_USAGE
    assert "'Analytics-DB': lower-case letters, digits and '_' only" in capsys.readouterr().err
