"""Parallel fetch through the whole state machine on the local stack (IAM enforced, as on AWS): a
result its upstream splits into partitions (Snowflake) or chunks (Databricks) is SPLIT by Fetch,
landed by the FetchBranches Map's branches as parts ``part-<branch>-<n>``, and listed by a manifest
written once; a failing branch fails the job through Cleanup with nothing left under its prefix.

``FetchBranchMinBytes`` is 1 here, so that results of a few hundred KB split as large ones do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import pytest

from query_relay import workflow
from query_relay_local.api_server import LocalApiServer
from query_relay_local.emulators.databricks import DatabricksEmulator
from query_relay_local.emulators.snowflake import SnowflakeEmulator
from query_relay_local.stack import LocalStack

from ..conformance.harness_snowflake import private_key, public_key_pem
from . import test_databricks_jobs as databricks
from . import test_snowflake_jobs as snowflake
from .landed import csv_text, failed_events, landed_manifest, landed_rows, state_count

PARALLEL = {"FetchBranchMinBytes": "1"}


@contextmanager
def stack_with(connections: dict[str, dict[str, Any]]) -> Iterator[LocalStack]:
    with LocalStack(parameter_overrides=PARALLEL) as stack:
        stack.load_connections(connections)
        # Every write of an object stays a version: how often the manifest was written can be counted.
        stack.s3.put_bucket_versioning(Bucket=stack.bucket, VersioningConfiguration={"Status": "Enabled"})
        yield stack


@pytest.fixture
def snowflake_emulator() -> Iterator[SnowflakeEmulator]:
    with SnowflakeEmulator(
        account=snowflake.ACCOUNT,
        user=snowflake.USER,
        public_key_pem=public_key_pem(private_key()),
    ) as emulator:
        emulator.config.partition_rows = 75  # 3,000 rows: 40 partitions
        yield emulator


@pytest.fixture
def databricks_emulator() -> Iterator[DatabricksEmulator]:
    with DatabricksEmulator(
        token=databricks.PAT, client_id=databricks.CLIENT_ID, client_secret=databricks.CLIENT_SECRET
    ) as emulator:
        emulator.config.chunk_rows = 100  # 4,000 rows: 40 chunks
        yield emulator


def snowflake_stack(emulator: SnowflakeEmulator, **connection: Any) -> AbstractContextManager[LocalStack]:
    return stack_with({snowflake.SNOWFLAKE_CONNECTION: snowflake.snowflake_connection(emulator) | connection})


def manifest_writes(stack: LocalStack, manifest_key: str) -> int:
    listed = stack.s3.list_object_versions(Bucket=stack.bucket, Prefix=manifest_key)
    return len([version for version in listed.get("Versions", []) if version["Key"] == manifest_key])


def job_prefix(manifest: dict[str, Any]) -> str:
    first: str = manifest["objects"][0]["key"]
    return first.rsplit("/", 1)[0] + "/"


def test_a_snowflake_result_of_40_partitions_lands_through_the_map_with_its_manifest_written_once(
    snowflake_emulator: SnowflakeEmulator,
) -> None:
    # Given 3,000 rows in 40 partitions and a connection fetching 4 at a time
    with snowflake_stack(snowflake_emulator, max_parallel_fetch=4) as stack:
        # When the job runs
        final, history = stack.run_job(
            snowflake.job(snowflake.NUMBERS, output={"compression": "gzip"}), timeout=120
        )
        # Then 40 branches landed one part each, in partition order, and one manifest lists them
        assert final["status"] == "SUCCEEDED", final
        assert state_count(history, "MapIterationSucceeded") == 40
        manifest = landed_manifest(stack, final)
        assert manifest["row_count"] == 3000
        assert [entry["key"].rsplit("/", 1)[1] for entry in manifest["objects"]] == [
            f"part-{branch:05d}-00000.jsonl.gz" for branch in range(40)
        ]
        assert [entry["rows"] for entry in manifest["objects"]] == [75] * 40
        assert landed_rows(stack, manifest, snowflake.native_rows) == snowflake.expected_rows(
            snowflake.NUMBERS
        )
        manifest_key = json.loads(final["output"])["manifest_key"]
        assert manifest_writes(stack, manifest_key) == 1
        # and nothing but the parts and the manifest stays (the branches' records are gone)
        keys = set(stack.keys(job_prefix(manifest)))
        assert keys == {entry["key"] for entry in manifest["objects"]} | {manifest_key}
    # and each later partition was read once, by its own branch
    partitions = sorted(
        int(request.query["partition"])
        for request in snowflake_emulator.requests
        if "partition" in request.query
    )
    assert partitions == list(range(1, 40))


def test_a_connection_that_fetches_one_at_a_time_reads_the_whole_result_in_one_fetch(
    snowflake_emulator: SnowflakeEmulator,
) -> None:
    with snowflake_stack(snowflake_emulator, max_parallel_fetch=1) as stack:
        final, history = stack.run_job(snowflake.job(snowflake.NUMBERS), timeout=90)
        assert final["status"] == "SUCCEEDED", final
        assert state_count(history, "MapStateEntered") == 0
        manifest = landed_manifest(stack, final)
        assert [entry["key"].rsplit("/", 1)[1] for entry in manifest["objects"]] == ["part-00000.jsonl"]
        assert manifest["row_count"] == 3000


@pytest.mark.parametrize(("output_format", "compression"), [("csv", "none"), ("native", "gzip")])
def test_a_databricks_result_of_40_chunks_lands_through_the_map(
    databricks_emulator: DatabricksEmulator, output_format: str, compression: str
) -> None:
    connection = databricks.databricks_connection(databricks_emulator) | {"max_parallel_fetch": 8}
    with stack_with({databricks.DATABRICKS_CONNECTION: connection}) as stack:
        spec = databricks.job(
            databricks.NUMBERS, output={"format": output_format, "compression": compression}
        )
        final, history = stack.run_job(spec, timeout=120)
        assert final["status"] == "SUCCEEDED", final
        assert state_count(history, "MapIterationSucceeded") == 40
        manifest = landed_manifest(stack, final)
        assert manifest["row_count"] == 4000
        assert len(manifest["objects"]) == 40
        rows = landed_rows(stack, manifest, databricks.native_rows)
        expected = databricks.expected_rows(databricks.NUMBERS)
        if output_format == "csv":
            assert rows == [{name: csv_text(value) for name, value in row.items()} for row in expected]
        else:
            assert [row["n"] for row in rows] == [str(n) for n in range(1, 4001)]
        assert manifest_writes(stack, json.loads(final["output"])["manifest_key"]) == 1
    assert len(databricks.storage_requests(databricks_emulator)) == 40  # each chunk downloaded once


def test_a_failing_branch_fails_the_job_through_cleanup_and_leaves_nothing(
    snowflake_emulator: SnowflakeEmulator,
) -> None:
    # Given a result whose partition 17 the upstream no longer knows (404, not retried)
    snowflake_emulator.fail_next(
        "partition", 404, times=100, when=lambda request: request.args.get("partition") == "17"
    )
    with snowflake_stack(snowflake_emulator, max_parallel_fetch=4) as stack:
        # When the job runs
        final, history = stack.run_job(snowflake.job(snowflake.NUMBERS), timeout=120)
        # Then it fails with the branch's error, through Cleanup, announced once
        assert final["status"] == "FAILED", final
        assert state_count(history, "MapStateFailed") == 1
        (failure,) = failed_events(stack)
        assert failure["error"] == "UpstreamTaskExpired"
        # and once the branches that were running have ended, nothing is left under its prefix
        # (Cleanup removed what had landed; a branch landing later removes its own)
        execution = stack.sfn.describe_execution(executionArn=final["executionArn"])
        prefix = f"results/dt={execution['startDate']:%Y-%m-%d}/{execution['name']}/"
        deadline = time.monotonic() + 30
        while list(stack.keys(prefix)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert list(stack.keys(prefix)) == []


def split_job(history: list[Any]) -> dict[str, Any]:
    """The job as the first Fetch returned it: SPLIT, with its fetch plan."""
    for event in history:
        details = event.get("taskSucceededEventDetails") or event.get("lambdaFunctionSucceededEventDetails")
        if details and '"SPLIT"' in details.get("output", ""):
            output = json.loads(details["output"])
            job: dict[str, Any] = output.get("job", output)
            if job.get("fetch_plan"):
                return job
    raise AssertionError("no Fetch returned a SPLIT job")


def claim_cleanup_of(stack: LocalStack, execution_arn: str) -> None:
    """What Cleanup (or an API cancel) does first: claim the execution's cleanup."""
    stack.client("dynamodb").put_item(
        TableName=stack.function_environment["CONTROL_TABLE"],
        Item={"pk": {"S": f"cleanup#{execution_arn}"}, "claimant": {"S": "state-machine"}},
    )


@pytest.mark.parametrize("claimed", [True, False], ids=["cleanup-claimed", "running"])
def test_a_branch_that_lands_after_the_cleanup_was_claimed_removes_what_it_wrote(
    snowflake_emulator: SnowflakeEmulator, claimed: bool
) -> None:
    with snowflake_stack(snowflake_emulator) as stack:
        # Given a split job (the statement is still upstream) and an execution being cleaned up
        spec = snowflake.job(snowflake.NUMBERS)
        final, history = stack.run_job(spec, timeout=120)
        assert final["status"] == "SUCCEEDED", final
        job = split_job(history) | {"job_id": "late-branch"}
        execution_arn = stack.execution_arn("late-branch")
        if claimed:
            claim_cleanup_of(stack, execution_arn)
        # When a branch still running then (Step Functions does not stop a running Lambda) lands
        branch = job["fetch_plan"]["branches"][3]
        event = {"spec": spec, "execution_arn": execution_arn, "job": job, "branch": branch}
        answer = stack.invoke("FetchFunction", event)
        # Then it removed its parts and record again; unclaimed, they stay for the manifest step
        assert answer.function_error is None, answer.payload
        left = sorted(key.rsplit("/", 1)[1] for key in stack.keys("results/") if "/late-branch/" in key)
        assert left == ([] if claimed else ["_branch-00003.json", "part-00003-00000.jsonl"])


def test_a_lone_fetch_that_lands_after_a_cancel_claimed_the_cleanup_removes_its_result(
    snowflake_emulator: SnowflakeEmulator,
) -> None:
    with snowflake_stack(snowflake_emulator, max_parallel_fetch=1) as stack:
        spec = snowflake.job("SELECT id, name FROM employees ORDER BY id")
        final, history = stack.run_job(spec, timeout=60)
        assert final["status"] == "SUCCEEDED", final
        fetched = next(
            json.loads(event["stateEnteredEventDetails"]["input"])
            for event in history
            if event["type"] == "TaskStateEntered" and event["stateEnteredEventDetails"]["name"] == "Fetch"
        )
        # Given the Fetch of a job that an API cancel claimed meanwhile
        execution_arn = stack.execution_arn("cancelled-meanwhile")
        claim_cleanup_of(stack, execution_arn)
        event = fetched | {
            "execution_arn": execution_arn,
            "job": fetched["job"] | {"job_id": "cancelled-meanwhile"},
        }
        # When it lands the result and writes the manifest
        answer = stack.invoke("FetchFunction", event)
        # Then it removed them again: a cancelled job leaves nothing
        assert answer.function_error is None, answer.payload
        assert [key for key in stack.keys("results/") if "/cancelled-meanwhile/" in key] == []


def test_a_branch_short_of_time_goes_on_in_its_next_invocation(
    snowflake_emulator: SnowflakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two partitions of about 3 MB of jsonl each, and parts of 1 MiB
    snowflake_emulator.config.partition_rows = 50_000
    statement = "SELECT n, square, label, ratio FROM numbers WHERE n <= 100000 ORDER BY n"
    overrides = PARALLEL | {"PartMaxBytes": str(1024 * 1024)}
    connection = snowflake.snowflake_connection(snowflake_emulator)
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({snowflake.SNOWFLAKE_CONNECTION: connection})
        # When every branch's Fetch has too little time left after its first part
        monkeypatch.setattr(workflow, "FETCH_RESERVE_SECONDS", 10.0**6)
        final, history = stack.run_job(
            snowflake.job(statement, polling={"timeout_seconds": 300}), timeout=300
        )
        # Then each branch went on part after part, and the manifest lists every part in order
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        names = [entry["key"].rsplit("/", 1)[1] for entry in manifest["objects"]]
        assert names == sorted(names)
        assert {name[:10] for name in names} == {"part-00000", "part-00001"}
        assert len(names) >= 6
        entered = [
            event["stateEnteredEventDetails"]["name"]
            for event in history
            if event["type"] == "TaskStateEntered"
        ]
        assert entered.count("FetchBranch") == len(names)
        rows = landed_rows(stack, manifest, snowflake.native_rows)
        assert [row["N"] for row in rows] == list(range(1, 100_001))


def test_a_branch_the_upstream_fails_for_a_while_is_retried_alone_and_the_job_lands_whole(
    snowflake_emulator: SnowflakeEmulator,
) -> None:
    # Given partition 17 answering 503 twice
    snowflake_emulator.fail_next(
        "partition", 503, times=2, when=lambda request: request.args.get("partition") == "17"
    )
    with snowflake_stack(snowflake_emulator, max_parallel_fetch=4) as stack:
        # When the job runs
        final, history = stack.run_job(snowflake.job(snowflake.NUMBERS), timeout=120)
        # Then that branch's Fetch was retried, and every row landed once, in order
        assert final["status"] == "SUCCEEDED", final
        assert state_count(history, "MapIterationSucceeded") == 40
        failed = [event for event in history if event["type"] in ("LambdaFunctionFailed", "TaskFailed")]
        assert len(failed) == 2
        manifest = landed_manifest(stack, final)
        assert landed_rows(stack, manifest, snowflake.native_rows) == snowflake.expected_rows(
            snowflake.NUMBERS
        )


def test_the_api_shows_how_far_a_parallel_fetch_is(snowflake_emulator: SnowflakeEmulator) -> None:
    # Given the last ten partitions answering a second late, fetched 2 at a time
    snowflake_emulator.fail_next(
        "partition",
        delay_seconds=1,
        times=10,
        when=lambda request: int(request.args.get("partition", "0")) >= 30,
    )
    with (
        snowflake_stack(snowflake_emulator, max_parallel_fetch=2) as stack,
        LocalApiServer(stack) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as api,
    ):
        running = stack.start_job(snowflake.job(snowflake.NUMBERS, job_id="watched"))
        # When the job is looked at while its branches land
        deadline, seen = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            view = api.get("/queries/watched").raise_for_status().json()
            if view["status"] != "RUNNING":
                break
            if view.get("parallel_fetch"):
                seen.append(view["parallel_fetch"])
            time.sleep(0.2)
        # Then it said how many branches there are and how many had landed, growing to the end
        assert stack.wait(running, timeout=60)["status"] == "SUCCEEDED"
        assert seen
        assert {progress["branches"] for progress in seen} == {40}
        landed = [progress["branches_landed"] for progress in seen]
        assert landed == sorted(landed)
        assert any(0 < count < 40 for count in landed)  # seen midway
        assert api.get("/queries/watched").json().get("parallel_fetch") is None  # done: the manifest says
