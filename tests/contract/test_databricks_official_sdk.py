"""The Databricks emulator driven by the official `databricks-sdk` (Statement Execution API): the SDK
parses every answer into its dataclasses (`StatementResponse`, `ResultManifest`, `ResultData`,
`ExternalLink`) and maps error answers to its exception classes, so an emulator it accepts speaks
Databricks' shapes. It also authenticates the way real clients do: a PAT, or OAuth M2M after
discovering the token endpoint (`/.well-known/databricks-config`, then the OIDC metadata)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import InvalidParameterValue, NotFound, PermissionDenied
from databricks.sdk.service.sql import (
    ColumnInfoTypeName,
    Disposition,
    ExecuteStatementRequestOnWaitTimeout,
    Format,
    ServiceErrorCode,
    StatementParameterListItem,
    StatementResponse,
    StatementState,
)

from query_relay_local.emulators.databricks import WAREHOUSE_ID, DatabricksEmulator

pytestmark = pytest.mark.contract

TOKEN = "dapi-sdk-contract-3e9a"
CLIENT_ID = "sdk-contract-sp"
CLIENT_SECRET = "sdk-contract-secret-6b07"


@pytest.fixture(autouse=True)
def _isolated_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ~/.databrickscfg, DATABRICKS_* or cloud variables of the machine may configure the SDK."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def emulator() -> Iterator[DatabricksEmulator]:
    with DatabricksEmulator(token=TOKEN, client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as running:
        yield running


def workspace(
    emulator: DatabricksEmulator,
    token: str | None = TOKEN,
    client_id: str | None = None,
    client_secret: str | None = None,
) -> WorkspaceClient:
    """A client of the emulator; retries are bounded so a broken answer fails fast, not in 5 min."""
    config = Config(
        host=emulator.base_url,
        token=token,
        client_id=client_id,
        client_secret=client_secret,
        retry_timeout_seconds=20,
        http_timeout_seconds=10,
    )
    return WorkspaceClient(config=config)


@pytest.fixture
def sdk(emulator: DatabricksEmulator) -> WorkspaceClient:
    return workspace(emulator)


def until_done(sdk: WorkspaceClient, statement_id: str, timeout: float = 10) -> StatementResponse:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = sdk.statement_execution.get_statement(statement_id)
        assert response.status is not None
        if response.status.state not in (StatementState.PENDING, StatementState.RUNNING):
            return response
        time.sleep(0.05)
    raise AssertionError(f"statement {statement_id} still running after {timeout}s")


def test_an_inline_statement_parses_into_the_sdks_dataclasses(sdk: WorkspaceClient) -> None:
    response = sdk.statement_execution.execute_statement(
        "SELECT * FROM all_types ORDER BY id", WAREHOUSE_ID, catalog="main", schema="default"
    )

    assert response.status is not None
    assert response.status.state is StatementState.SUCCEEDED
    manifest, result = response.manifest, response.result
    assert manifest is not None
    assert result is not None
    assert manifest.format is Format.JSON_ARRAY
    assert manifest.schema is not None
    assert manifest.schema.column_count == 12
    columns = {column.name: column for column in manifest.schema.columns or []}
    assert columns["c_integer"].type_name is ColumnInfoTypeName.LONG
    assert columns["c_decimal"].type_name is ColumnInfoTypeName.DECIMAL
    assert (columns["c_decimal"].type_precision, columns["c_decimal"].type_scale) == (12, 4)
    assert columns["c_timestamp_tz"].type_name is ColumnInfoTypeName.TIMESTAMP
    assert columns["c_binary"].type_name is ColumnInfoTypeName.BINARY
    # TIMESTAMP_NTZ is a type name the service gives and the SDK's enum lacks: it parses as None
    assert columns["c_timestamp"].type_name is None
    assert columns["c_timestamp"].type_text == "TIMESTAMP_NTZ"
    assert [column.position for column in columns.values()] == list(range(12))
    assert (manifest.total_row_count, manifest.total_chunk_count, manifest.truncated) == (5, 1, False)
    assert result.chunk_index == 0
    assert result.data_array is not None
    assert result.data_array[0][:6] == ["1", "42", "123.4500", "1.5", "plain text", "true"]
    assert result.external_links == []


def test_an_async_statement_is_polled_and_its_chunks_fetched_by_index(
    sdk: WorkspaceClient, emulator: DatabricksEmulator
) -> None:
    emulator.config.query_seconds = 0.3
    emulator.config.numbers_rows = 250
    emulator.config.chunk_rows = 100
    submitted = sdk.statement_execution.execute_statement(
        "SELECT n, label FROM numbers", WAREHOUSE_ID, wait_timeout="0s"
    )
    assert submitted.statement_id is not None
    assert submitted.status is not None
    assert submitted.status.state is StatementState.PENDING

    done = until_done(sdk, submitted.statement_id)
    assert done.manifest is not None
    assert done.result is not None
    rows = list(done.result.data_array or [])
    next_index = done.result.next_chunk_index
    while next_index is not None:
        chunk = sdk.statement_execution.get_statement_result_chunk_n(submitted.statement_id, next_index)
        assert chunk.chunk_index == next_index
        assert chunk.next_chunk_internal_link in (
            None,
            f"/api/2.0/sql/statements/{done.statement_id}/result/chunks/2",
        )
        rows.extend(chunk.data_array or [])
        next_index = chunk.next_chunk_index

    assert [(c.chunk_index, c.row_offset, c.row_count) for c in done.manifest.chunks or []] == [
        (0, 0, 100),
        (1, 100, 100),
        (2, 200, 50),
    ]
    assert [int(n) for n, _ in rows] == list(range(1, 251))


def test_external_links_carry_what_a_download_needs(
    sdk: WorkspaceClient, emulator: DatabricksEmulator
) -> None:
    emulator.config.chunk_rows = 20
    response = sdk.statement_execution.execute_statement(
        "SELECT id, name FROM employees ORDER BY id",
        WAREHOUSE_ID,
        disposition=Disposition.EXTERNAL_LINKS,
        format=Format.JSON_ARRAY,
    )
    assert response.statement_id is not None
    assert response.manifest is not None
    assert response.result is not None
    first = (response.result.external_links or [])[0]
    second_chunk = sdk.statement_execution.get_statement_result_chunk_n(response.statement_id, 1)
    second = (second_chunk.external_links or [])[0]

    rows = []
    for link in (first, second):
        assert link.external_link is not None
        assert link.external_link.startswith(emulator.link_base_url)
        # the storage URL is fetched with its own headers and never with the workspace credential
        download = requests.get(link.external_link, headers=link.http_headers, timeout=10)
        assert download.status_code == 200, download.text
        assert len(download.content) == link.byte_count
        rows.extend(json.loads(download.content))
    refused = requests.get(
        first.external_link or "",
        headers={**(first.http_headers or {}), "Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )

    assert (first.chunk_index, first.row_offset, first.row_count, first.next_chunk_index) == (0, 0, 20, 1)
    assert (
        first.next_chunk_internal_link == f"/api/2.0/sql/statements/{response.statement_id}/result/chunks/1"
    )
    assert first.expiration is not None
    assert first.expiration.endswith("Z")
    assert first.http_headers == {"x-amz-server-side-encryption-customer-algorithm": "AES256"}
    assert (second.chunk_index, second.row_offset, second.row_count, second.next_chunk_index) == (
        1,
        20,
        16,
        None,
    )
    assert response.manifest.total_byte_count == sum(
        c.byte_count or 0 for c in response.manifest.chunks or []
    )
    assert [row[0] for row in rows] == [str(n) for n in range(1, 37)]
    assert refused.status_code == 400


def test_cancel_execution_and_on_wait_timeout_cancel(
    sdk: WorkspaceClient, emulator: DatabricksEmulator
) -> None:
    emulator.config.query_seconds = 30
    emulator.config.wait_scale = 0.02  # "5s" waits 0.1 s
    running = sdk.statement_execution.execute_statement("SELECT 1", WAREHOUSE_ID, wait_timeout="0s")
    assert running.statement_id is not None
    sdk.statement_execution.cancel_execution(running.statement_id)
    timed_out = sdk.statement_execution.execute_statement(
        "SELECT 2",
        WAREHOUSE_ID,
        wait_timeout="5s",
        on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CANCEL,
    )

    canceled = sdk.statement_execution.get_statement(running.statement_id)
    assert canceled.status is not None
    assert canceled.status.state is StatementState.CANCELED
    assert timed_out.status is not None
    assert timed_out.status.state is StatementState.CANCELED


def test_a_failed_statement_carries_its_error_and_sql_state(sdk: WorkspaceClient) -> None:
    response = sdk.statement_execution.execute_statement(
        "SELECT :n AS n",
        WAREHOUSE_ID,
        parameters=[StatementParameterListItem(name="n", value="not a number", type="INT")],
    )
    assert response.status is not None
    assert response.status.state is StatementState.FAILED
    assert response.status.error is not None
    assert response.status.error.error_code is ServiceErrorCode.BAD_REQUEST
    assert response.status.error.message is not None
    assert response.status.error.message.startswith("[CAST_INVALID_INPUT]")
    assert response.status.sql_state == "22018"


def test_typed_parameters_go_through_the_sdk(sdk: WorkspaceClient) -> None:
    response = sdk.statement_execution.execute_statement(
        "SELECT name, :since AS since FROM employees WHERE salary > :floor ORDER BY id LIMIT 1",
        WAREHOUSE_ID,
        parameters=[
            StatementParameterListItem(name="floor", value="100000.00", type="DECIMAL(10,2)"),
            StatementParameterListItem(name="since", value="2020-01-01", type="DATE"),
        ],
    )
    assert response.result is not None
    assert response.manifest is not None
    assert response.manifest.schema is not None
    since = (response.manifest.schema.columns or [])[1]
    assert (since.name, since.type_name) == ("since", ColumnInfoTypeName.DATE)
    assert response.result.data_array == [["Radia Lovelace", "2020-01-01"]]


def test_refused_requests_raise_the_sdks_error_classes(
    sdk: WorkspaceClient, emulator: DatabricksEmulator
) -> None:
    with pytest.raises(NotFound):
        sdk.statement_execution.get_statement("01ef0000-0000-0000-0000-000000000000")
    with pytest.raises(InvalidParameterValue, match="wait_timeout"):
        sdk.statement_execution.execute_statement("SELECT 1", WAREHOUSE_ID, wait_timeout="60s")
    with pytest.raises(InvalidParameterValue, match="not supported by this emulator"):
        sdk.statement_execution.execute_statement(
            "SELECT 1", WAREHOUSE_ID, disposition=Disposition.EXTERNAL_LINKS, format=Format.ARROW_STREAM
        )
    with pytest.raises(PermissionDenied, match="Invalid access token"):
        workspace(emulator, token="dapi-wrong").statement_execution.execute_statement(
            "SELECT 1", WAREHOUSE_ID
        )


def test_the_sdk_waits_out_a_429_as_its_retry_after_says(
    sdk: WorkspaceClient, emulator: DatabricksEmulator
) -> None:
    statement_id = sdk.statement_execution.execute_statement("SELECT 1", WAREHOUSE_ID).statement_id
    assert statement_id is not None
    emulator.fail_next("status", 429, retry_after=1)
    started = time.monotonic()
    response = sdk.statement_execution.get_statement(statement_id)
    assert time.monotonic() - started >= 1
    assert response.status is not None
    assert response.status.state is StatementState.SUCCEEDED
    assert [entry.path for entry in emulator.requests].count(f"/api/2.0/sql/statements/{statement_id}") == 2


def test_oauth_m2m_discovers_the_token_endpoint_and_reuses_its_token(emulator: DatabricksEmulator) -> None:
    sdk = workspace(emulator, token=None, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    first = sdk.statement_execution.execute_statement("SELECT 1 AS one", WAREHOUSE_ID)
    assert first.statement_id is not None
    sdk.statement_execution.get_statement(first.statement_id)
    sdk.statement_execution.get_statement(first.statement_id)

    assert first.result is not None
    assert first.result.data_array == [["1"]]
    assert emulator.token_requests == 1
    paths = [entry.path for entry in emulator.requests]
    assert paths[:3] == [
        "/.well-known/databricks-config",
        "/oidc/.well-known/oauth-authorization-server",
        "/oidc/v1/token",
    ]
    wrong = workspace(emulator, token=None, client_id=CLIENT_ID, client_secret="not-the-secret")
    with pytest.raises(ValueError, match="invalid_client"):
        wrong.statement_execution.execute_statement("SELECT 1", WAREHOUSE_ID)
