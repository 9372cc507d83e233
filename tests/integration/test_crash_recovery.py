"""A function that dies half-way through writing a result (killed, timed out) is retried by the state
machine, and the retry lands exactly what one clean run lands: same objects, same bytes, nothing
left over (no stray part, no unfinished multipart upload, no manifest of the dead attempt).

The death is simulated in this process: the rows the function is writing stop at a given row with
``SimulatedCrash``, which the local Lambda runtime answers as AWS reports a dead invocation
(``Runtime.ExitError`` or ``Sandbox.Timedout``). A killed process runs none of s3transfer's
cleanup, so the simulation also leaves what such a death leaves: a multipart upload of the part it
was writing, started and never completed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from query_relay import workflow
from query_relay.models import JobSpec
from query_relay.providers import FetchedResult, TabularResult
from query_relay.results import job_prefix
from query_relay.state import JobState, ResultPointer
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.emulators.looker import LookerEmulator
from query_relay_local.emulators.veza import VezaEmulator
from query_relay_local.lambda_runtime import SimulatedCrash
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION, esql_connection
from .landed import landed_manifest
from .test_esql_jobs import expected_rows, rows_of, upstream_answer
from .test_looker_jobs import BY_COUNTRY, LOOKER_CLIENT_ID, LOOKER_CLIENT_SECRET, looker_connection
from .test_veza_jobs import OKTA_USERS, VEZA_API_KEY, veza_connection

QUERY = "FROM employees | KEEP emp_no, first_name, last_name, salary, hire_date | SORT emp_no"
CRASH_AT_ROW = 600  # of 1,000: well inside the part being written


class CrashOnce:
    """Stands in for ``workflow._land``: the first landing dies at ``CRASH_AT_ROW``, later ones run."""

    def __init__(self, stack: LocalStack, error_type: str) -> None:
        self._stack = stack
        self._error_type = error_type
        self._land = workflow._land
        self.crashed_under: list[str] = []

    def __call__(
        self,
        spec: JobSpec,
        job: JobState,
        result: FetchedResult,
        budget: workflow.FetchBudget | None = None,
        **keywords: Any,
    ) -> ResultPointer | None:
        if not self.crashed_under:
            assert isinstance(result, TabularResult)
            prefix = job_prefix(spec.output, job.job_id, job.submitted_at)
            self.crashed_under.append(prefix)
            result.rows = self._dying(result.rows, prefix)
        return self._land(spec, job, result, budget, **keywords)

    def _dying(self, rows: Iterator[Sequence[Any]], prefix: str) -> Iterator[Sequence[Any]]:
        for number, row in enumerate(rows):
            if number == CRASH_AT_ROW:
                self._leave_an_unfinished_upload(f"{prefix}part-00000.jsonl")
                raise SimulatedCrash(self._error_type)
            yield row

    def _leave_an_unfinished_upload(self, key: str) -> None:
        s3, bucket = self._stack.s3, self._stack.bucket
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024)


def spec(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "connection": ES_CONNECTION,
        "query": {"query": QUERY},
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
    }


def crash_errors(history: list[Any]) -> list[str]:
    return [
        event["lambdaFunctionFailedEventDetails"]["error"]
        for event in history
        if event["type"] == "LambdaFunctionFailed"
    ]


def objects_relative_to_prefix(manifest: dict[str, Any], prefix: str) -> list[tuple[str, int, int, str]]:
    return [
        (entry["key"].removeprefix(prefix), entry["rows"], entry["bytes"], entry["sha256"])
        for entry in manifest["objects"]
    ]


@pytest.mark.parametrize(
    ("writer", "error_type"),
    [
        pytest.param("Fetch", "Runtime.ExitError", id="fetch-killed"),
        pytest.param("Fetch", "Sandbox.Timedout", id="fetch-timed-out"),
        pytest.param("Submit", "Runtime.ExitError", id="submit-fast-path-killed"),
    ],
)
def test_a_function_dying_mid_write_is_retried_and_lands_exactly_what_a_clean_run_lands(
    esql_emulator: EsqlEmulator, monkeypatch: pytest.MonkeyPatch, writer: str, error_type: str
) -> None:
    # Given a stack where the result is written by `writer`: Submit when the query finishes inside
    # its wait (the fast path), else Fetch after polling
    fast_path = writer == "Submit"
    esql_emulator.config.query_seconds = 0 if fast_path else 1
    overrides = {} if fast_path else {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "1"}
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        # and one clean run of the query
        clean_final, clean_history = stack.run_job(spec("clean-1"), timeout=60)
        assert clean_final["status"] == "SUCCEEDED", clean_final
        assert crash_errors(clean_history) == []
        clean = landed_manifest(stack, clean_final)
        # When the same query runs again and its writing function dies 600 rows into the result
        crash = CrashOnce(stack, error_type)
        monkeypatch.setattr(workflow, "_land", crash)
        final, history = stack.run_job(spec("crashed-1"), timeout=60)
        # Then the state machine retried the dead function once, and the job succeeded
        assert crash.crashed_under, "the function never died"
        assert crash_errors(history) == [error_type]
        failed_state = next(
            event["stateEnteredEventDetails"]["name"]
            for event in reversed(history[: _first_failure(history)])
            if event["type"] == "TaskStateEntered"
        )
        assert failed_state == writer
        assert final["status"] == "SUCCEEDED", final
        # and it landed exactly what the clean run landed: same part names, rows, bytes, sha256
        manifest = landed_manifest(stack, final)
        prefix = crash.crashed_under[0]
        clean_prefix = clean["objects"][0]["key"].rsplit("/", 1)[0] + "/"
        assert objects_relative_to_prefix(manifest, prefix) == objects_relative_to_prefix(clean, clean_prefix)
        assert (manifest["row_count"], manifest["byte_count"], manifest["columns"]) == (
            clean["row_count"],
            clean["byte_count"],
            clean["columns"],
        )
        assert rows_of(stack, manifest) == expected_rows(upstream_answer(esql_emulator, {"query": QUERY}))
        # and nothing else: no stray part, no unfinished multipart upload anywhere in the bucket
        output = json.loads(final["output"])
        listed = {entry["key"] for entry in manifest["objects"]} | {output["manifest_key"]}
        assert set(stack.keys(prefix)) == listed
        assert stack.s3.list_multipart_uploads(Bucket=stack.bucket).get("Uploads", []) == []


def _first_failure(history: list[Any]) -> int:
    return next(index for index, event in enumerate(history) if event["type"] == "LambdaFunctionFailed")


# --- a Submit that dies after the upstream accepted the query ------------------------------------


def _crash_after_recording(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first Submit records its task (as it always does), then dies: the ids it recorded."""
    recorded: list[str] = []
    make_recorder = workflow._recorder

    def recorder(step: Any, job_id: str, submitted_at: Any) -> Any:
        record = make_recorder(step, job_id, submitted_at)

        def record_then_die(upstream_id: str, state: dict[str, Any]) -> None:
            record(upstream_id, state)
            if not recorded:
                recorded.append(upstream_id)
                raise SimulatedCrash("Runtime.ExitError")

        return record_then_die

    monkeypatch.setattr(workflow, "_recorder", recorder)
    return recorded


@pytest.fixture(params=["esql", "looker", "veza"])
def slow_upstream(
    request: pytest.FixtureRequest, esql_emulator: EsqlEmulator
) -> Iterator[tuple[EsqlEmulator | LookerEmulator | VezaEmulator, dict[str, Any], dict[str, Any]]]:
    """(emulator, connection, query) of each provider, queries running 3 s."""
    esql_emulator.config.query_seconds = 3
    if request.param == "esql":
        yield esql_emulator, esql_connection(esql_emulator), {"query": QUERY}
    elif request.param == "looker":
        with LookerEmulator(client_id=LOOKER_CLIENT_ID, client_secret=LOOKER_CLIENT_SECRET) as looker:
            looker.config.query_seconds = 3
            yield looker, looker_connection(looker), BY_COUNTRY
    else:
        with VezaEmulator(api_key=VEZA_API_KEY, query_seconds=3) as veza:
            yield veza, veza_connection(veza), OKTA_USERS


def test_a_submit_that_dies_after_the_upstream_named_its_task_resumes_that_task(
    monkeypatch: pytest.MonkeyPatch,
    slow_upstream: tuple[EsqlEmulator | LookerEmulator | VezaEmulator, dict[str, Any], dict[str, Any]],
) -> None:
    # Given a query that runs past the submit wait, and a Submit that dies once the task exists
    emulator, connection, query = slow_upstream
    recorded = _crash_after_recording(monkeypatch)
    with LocalStack(parameter_overrides={"SubmitWaitSeconds": "1", "LongPollMaxSeconds": "1"}) as stack:
        stack.load_connections({"crashing": connection})
        job = {"connection": "crashing", "query": query, "polling": {"initial_seconds": 1, "max_seconds": 1}}
        # When the job runs
        final, history = stack.run_job(job, timeout=60)
        # Then the dead Submit was retried, the retry resumed the task the first one started
        assert crash_errors(history) == ["Runtime.ExitError"]
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        assert [manifest["upstream_id"]] == recorded
        assert any("started the upstream task and died: resuming it" in line for line in stack.logs)
    # and the upstream ran that one task only: nothing was submitted twice
    assert list(emulator.task_states()) == recorded
