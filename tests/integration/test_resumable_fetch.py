"""A result that needs several Fetch invocations lands the bytes one Fetch lands (issue 15, item 3).

A Fetch stops after a whole part once its invocation's time left is short (``FetchBudget``); the
state machine calls Fetch again, which reads the answer again, skips the rows already landed and
goes on with the next part. Here the reserve is raised past the function's whole timeout, so that
every Fetch stops after its first part: a result of N parts takes N invocations.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from query_relay import results, workflow
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION, esql_connection
from .landed import landed_manifest, read_object

ROWS = 30_000  # about 5 MB of jsonl: 5 parts of the smallest PartMaxBytes (1 MiB)
NATIVE_ROWS = 160_000  # about 17 MB of ES|QL JSON: 4 multipart chunks of S3's least size (5 MiB)
LEAST_CHUNK = 5 * 1024 * 1024


def spec(job_id: str, output: dict[str, str], rows: int = ROWS) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "connection": ES_CONNECTION,
        "query": {"query": f"FROM synthetic_{rows} | LIMIT {rows}"},
        "output": output,
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 120},
    }


def without_task_facts(answer: bytes) -> dict[str, Any]:
    """An ES|QL answer but for what differs from one task to the next: its id and times."""
    return {key: value for key, value in json.loads(answer).items() if key != "id" and "time" not in key}


def fetch_invocations(history: list[Any]) -> int:
    return sum(
        1
        for event in history
        if event["type"] == "TaskStateEntered" and event["stateEnteredEventDetails"]["name"] == "Fetch"
    )


def landed_objects(stack: LocalStack, manifest: dict[str, Any]) -> list[tuple[str, int, int, str, bytes]]:
    """Each object's name in the job's prefix, rows, bytes, sha256 and stored bytes, in order."""
    return [
        (
            entry["key"].rsplit("/", 1)[1],
            entry["rows"],
            entry["bytes"],
            entry["sha256"],
            read_object(stack, entry["key"]),
        )
        for entry in manifest["objects"]
    ]


@pytest.mark.parametrize(
    "output",
    [{"format": "jsonl"}, {"format": "csv", "compression": "gzip"}],
    ids=["jsonl", "csv.gz"],
)
def test_a_result_fetched_by_one_invocation_per_part_lands_the_bytes_of_one_fetch(
    esql_emulator: EsqlEmulator, monkeypatch: pytest.MonkeyPatch, output: dict[str, str]
) -> None:
    # Given a stack with the smallest parts, where the query outlasts Submit's wait
    esql_emulator.config.query_seconds = 1
    overrides = {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "1", "PartMaxBytes": str(1024 * 1024)}
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        # and the result landed by one Fetch
        one_final, one_history = stack.run_job(spec("one-fetch", output), timeout=120)
        assert one_final["status"] == "SUCCEEDED", one_final
        assert fetch_invocations(one_history) == 1
        one = landed_manifest(stack, one_final)
        # When every Fetch has too little time left after its first part
        monkeypatch.setattr(workflow, "FETCH_RESERVE_SECONDS", 10.0**6)
        final, history = stack.run_job(spec("many-fetches", output), timeout=240)
        # Then the state machine called Fetch once per part, and the job succeeded
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        assert fetch_invocations(history) == len(manifest["objects"]) >= 3
        # and it landed the very objects one Fetch lands: names, rows, sizes, sha256 and bytes
        assert landed_objects(stack, manifest) == landed_objects(stack, one)
        assert (
            (manifest["row_count"], manifest["byte_count"], manifest["columns"])
            == (
                one["row_count"],
                one["byte_count"],
                one["columns"],
            )
            == (ROWS, one["byte_count"], one["columns"])
        )
        # and left no unfinished multipart upload
        assert stack.s3.list_multipart_uploads(Bucket=stack.bucket).get("Uploads", []) == []


def test_a_native_object_uploaded_over_several_invocations_is_the_object_of_one_fetch(
    esql_emulator: EsqlEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stack whose Fetch uploads a native object in chunks of S3's least size
    monkeypatch.setattr(results, "MULTIPART_CHUNK_BYTES", LEAST_CHUNK)
    esql_emulator.config.query_seconds = 1
    overrides = {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "1"}
    output = {"format": "native"}
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        one_final, one_history = stack.run_job(spec("one-fetch", output, NATIVE_ROWS), timeout=120)
        assert one_final["status"] == "SUCCEEDED", one_final
        assert fetch_invocations(one_history) == 1
        one = landed_manifest(stack, one_final)
        # When every Fetch has too little time left after its first chunk
        monkeypatch.setattr(workflow, "FETCH_RESERVE_SECONDS", 10.0**6)
        final, history = stack.run_job(spec("many-fetches", output, NATIVE_ROWS), timeout=240)
        # Then the state machine called Fetch once per chunk (the last one finishing the upload)
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        assert fetch_invocations(history) == -(-manifest["byte_count"] // LEAST_CHUNK) >= 3
        # and the object is the answer, as one Fetch lands it (but for the task's own id and times),
        # its sha256 and size those of the bytes stored, its rows counted over the whole answer
        [(name, rows, size, sha256, body)] = landed_objects(stack, manifest)
        [(one_name, _, _, _, one_body)] = landed_objects(stack, one)
        assert (name, size, sha256) == (one_name, len(body), hashlib.sha256(body).hexdigest())
        assert without_task_facts(body) == without_task_facts(one_body)
        assert rows == manifest["row_count"] == one["row_count"] == NATIVE_ROWS
        assert stack.s3.list_multipart_uploads(Bucket=stack.bucket).get("Uploads", []) == []
