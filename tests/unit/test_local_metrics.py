"""Concurrent invocations of the local runtime share one process, hence Powertools' class-level
metric set; on Lambda each has its own sandbox. The local runtime serializes adding and flushing
metrics, so that no invocation fails with SchemaValidationError for another's flush."""

from __future__ import annotations

import sys
import threading

import pytest
from aws_lambda_powertools import Metrics

from query_relay_local.lambda_runtime import _serialize_powertools_metrics


def _flush_concurrently(threads: int = 8, rounds: int = 1000) -> list[Exception]:
    """Invocations adding and flushing metrics at once, threads switching as often as they can
    (without the serialization this fails dozens of times: SchemaValidationError, RuntimeError)."""
    metrics = Metrics(namespace="LocalRuntimeTest", service="local-runtime-test")
    failures: list[Exception] = []

    def invocation() -> None:
        for _ in range(rounds):
            try:
                metrics.add_metric(name="Work", unit="Count", value=1)
                metrics.flush_metrics()
            except Exception as error:  # noqa: BLE001 - collected for the assertion
                failures.append(error)

    workers = [threading.Thread(target=invocation) for _ in range(threads)]
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(switching)
    return failures


def test_concurrent_invocations_flush_metrics_without_schema_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _serialize_powertools_metrics()
    assert _flush_concurrently() == []
    capsys.readouterr()  # the EMF lines
