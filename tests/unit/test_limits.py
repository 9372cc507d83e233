"""The budget that keeps a job inside Step Functions' 256 KiB payload (query_relay.limits): every
part of the state that could grow is bounded, and the worst case fits with room to spare."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from query_relay import workflow
from query_relay.exceptions import MESSAGE_MAX_CHARS, InvalidJobSpec, UpstreamQueryFailed
from query_relay.limits import (
    JOB_SPEC_MAX_BYTES,
    MARGIN_BYTES,
    PROVIDER_STATE_MAX_BYTES,
    STATE_PAYLOAD_MAX_BYTES,
    check_spec_fits,
    json_size,
)
from query_relay.models import MAX_PROBLEMS_DESCRIBED, parse_job_spec
from query_relay.parallel import MAX_FETCH_BRANCHES, MAX_PARALLEL_FETCH
from query_relay.providers import looker, veza
from query_relay.state import Failure, FetchBranch, FetchPlan, JobState, ResultPointer

LONGEST_NAME = "n" * 80  # job ids and execution names
LONGEST_CONNECTION = "c" * 128
EXECUTION_ARN = f"arn:aws-us-gov:states:us-gov-west-1:123456789012:execution:{'m' * 80}:{LONGEST_NAME}"


def spec_of_size(size: int) -> dict[str, Any]:
    """A valid job spec of exactly ``size`` bytes as compact JSON, its other fields at their longest."""
    spec: dict[str, Any] = {
        "job_id": LONGEST_NAME,
        "connection": LONGEST_CONNECTION,
        "query": {"query": ""},
        "output": {"format": "jsonl", "compression": "gzip", "prefix": "p/" * 256},
        "polling": {"initial_seconds": 3600, "max_seconds": 3600, "timeout_seconds": 604800},
    }
    spec["query"]["query"] = "x" * (size - json_size(spec))
    assert json_size(spec) == size
    parse_job_spec(spec)
    return spec


def largest_job_state() -> dict[str, Any]:
    """The job state at its largest: Veza's provider state carries the whole query spec."""
    provider_state = {"spec": {"query": "v" * (veza.SPEC_STATE_LIMIT_BYTES - len('{"query":""}'))}}
    assert json_size(provider_state["spec"]) == veza.SPEC_STATE_LIMIT_BYTES
    now = datetime.now(UTC)
    job = JobState(
        job_id=LONGEST_NAME,
        connection=LONGEST_CONNECTION,
        provider="veza",
        upstream_id="u" * 128,
        status="FINISHED",
        polls=10**9,
        wait_seconds=3600,
        submitted_at=now,
        deadline=now,
        provider_state=provider_state,
        result=ResultPointer(bucket="b" * 63, manifest_key="k" * 1024, row_count=10**12, byte_count=10**15),
        holds_slot=True,
        slot_checks=10**9,
        rounds=10**6,
        continuations=10**6,
        continue_as_new=True,
        next_execution=LONGEST_NAME,
        # A parallel fetch's plan at its most branches, over a result of a million pieces.
        fetch_plan=FetchPlan(
            branches=[
                FetchBranch(index=index, first=10**6 - 1 - index, end=10**6 - index)
                for index in range(MAX_FETCH_BRANCHES)
            ],
            max_parallel=MAX_PARALLEL_FETCH,
        ),
    )
    return job.model_dump(mode="json")


def lambda_error_cause() -> str:
    """A Lambda failure's Cause (the runtime's error document): the longest message and a deep trace."""
    frame = '  File "/opt/python/query_relay/providers/veza.py", line 1234, in a_function_name\n    call(x)\n'
    return json.dumps(
        {
            "errorMessage": "m" * MESSAGE_MAX_CHARS,
            "errorType": "UpstreamProtocolError",
            "requestId": "r" * 36,
            "stackTrace": [frame] * 60,
        }
    )


def test_the_largest_state_fits_step_functions_with_a_margin() -> None:
    # Given every part of the execution's state at its bound, as Cleanup's output holds them
    state: dict[str, Any] = {
        "spec": spec_of_size(JOB_SPEC_MAX_BYTES),
        "execution": LONGEST_NAME,
        "execution_arn": EXECUTION_ARN,
        "continued_from": EXECUTION_ARN,
        "job": largest_job_state(),
        "error": {"Error": "UpstreamProtocolError", "Cause": lambda_error_cause()},
        "failure": Failure(
            job_id=LONGEST_NAME,
            connection=LONGEST_CONNECTION,
            provider="veza",
            error="UpstreamProtocolError",
            cause="f" * MESSAGE_MAX_CHARS,
        ).model_dump(mode="json"),
    }
    # Then it fits 256 KiB, with the margin left over
    assert json_size(state["job"]["provider_state"]) <= PROVIDER_STATE_MAX_BYTES
    assert json_size(state) + MARGIN_BYTES <= STATE_PAYLOAD_MAX_BYTES, json_size(state)
    # and so does a continuation's input, which carries the spec and the job state
    continuation = {key: state[key] for key in ("spec", "execution", "continued_from", "job")}
    assert json_size(continuation) + MARGIN_BYTES <= STATE_PAYLOAD_MAX_BYTES


def test_providers_keep_their_state_within_the_budget() -> None:
    assert veza.SPEC_STATE_LIMIT_BYTES + len('{"spec":}') <= PROVIDER_STATE_MAX_BYTES
    # Looker's field names: at most so many names of at most so many characters, each quoted
    looker_fields = looker.STATE_FIELDS_MAX_CHARS + 3 * looker.STATE_FIELDS_MAX
    assert looker_fields + len('{"result_format":"json_detail","fields":[]}') <= PROVIDER_STATE_MAX_BYTES


def test_a_spec_at_the_limit_fits_and_one_byte_more_is_refused_naming_the_query() -> None:
    check_spec_fits(spec_of_size(JOB_SPEC_MAX_BYTES))

    with pytest.raises(InvalidJobSpec, match=r"^invalid job spec: spec\.query: the job spec is 98305 bytes"):
        check_spec_fits(spec_of_size(JOB_SPEC_MAX_BYTES + 1), where="spec.")


def test_a_spec_counts_its_bytes_in_utf8() -> None:
    # Given a spec 40 characters under the limit, but 20 bytes over it in UTF-8
    spec = spec_of_size(JOB_SPEC_MAX_BYTES)
    spec["query"]["query"] = spec["query"]["query"][:-100] + "é" * 60  # 120 bytes for 60 characters
    with pytest.raises(InvalidJobSpec, match="query: the job spec is"):
        check_spec_fits(spec)


def test_submit_refuses_a_spec_too_big_before_it_loads_the_connection() -> None:
    # Given a spec started directly (not through the API or the CLI), too big beside its job state;
    # no connection, settings or AWS exist here: Submit must refuse before it looks for any
    event = {
        "spec": spec_of_size(JOB_SPEC_MAX_BYTES + 1),
        "execution": "e",
        "execution_arn": "a",
        "job": None,
    }

    with pytest.raises(InvalidJobSpec, match="query: the job spec is"):
        workflow.submit(event)


def test_error_messages_are_cut_to_size() -> None:
    error = UpstreamQueryFailed("reason " * 5000)

    assert len(error.message) == MESSAGE_MAX_CHARS
    assert str(error) == error.message
    assert error.message.endswith("(cut)")
    assert UpstreamQueryFailed("short").message == "short"


def test_a_spec_with_thousands_of_problems_is_described_in_a_few_lines() -> None:
    spec = {"connection": "es", "query": {}} | {f"unknown_{number}": 1 for number in range(5000)}

    with pytest.raises(InvalidJobSpec) as refused:
        parse_job_spec(spec)

    message = refused.value.message
    assert message.count("Extra inputs are not permitted") == MAX_PROBLEMS_DESCRIBED
    assert message.endswith(f"and {5000 - MAX_PROBLEMS_DESCRIBED} more problems")


def test_cleanup_cuts_a_long_cause() -> None:
    cause = json.dumps({"errorMessage": "boom " * 5000, "errorType": "Exception", "stackTrace": []})

    failure = workflow.cleanup(
        {"spec": {}, "execution": "e", "error": {"Error": "Exception", "Cause": cause}}
    )

    assert len(failure["cause"]) == MESSAGE_MAX_CHARS
