"""Cleanup turns whatever was caught into a clean, named failure."""

from __future__ import annotations

import json

import pytest

from query_relay import workflow
from query_relay.settings import get_settings


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULTS_BUCKET", "query-relay-results-test")
    get_settings.cache_clear()


def test_a_lambda_error_becomes_its_name_and_message_without_the_stack_trace() -> None:
    # Given Submit failed before any upstream task existed
    cause = json.dumps(
        {
            "errorType": "ConnectionNotFound",
            "errorMessage": "connection 'nope' not found",
            "stackTrace": ["x"],
        }
    )
    event = {
        "spec": {"connection": "nope", "query": {"query": "FROM x"}},
        "execution": "exec-1",
        "error": {"Error": "ConnectionNotFound", "Cause": cause},
    }
    # When Cleanup runs
    failure = workflow.cleanup(event)
    # Then the failure names the error and keeps only the message
    assert failure == {
        "job_id": "exec-1",
        "connection": "nope",
        "provider": "",
        "error": "ConnectionNotFound",
        "cause": "connection 'nope' not found",
        "upstream_cancelled": False,
        "claimed": True,
    }


def test_a_states_error_keeps_its_cause_and_a_spec_that_is_not_an_object_is_survived() -> None:
    event = {
        "spec": "not a spec",
        "execution": "exec-2",
        "error": {"Error": "States.Timeout", "Cause": "took too long"},
    }
    failure = workflow.cleanup(event)
    assert (failure["job_id"], failure["error"], failure["cause"]) == (
        "exec-2",
        "States.Timeout",
        "took too long",
    )
