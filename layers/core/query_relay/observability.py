"""Powertools Logger, Tracer and Metrics, created once and imported everywhere.

Every log line a job's work writes carries the job id as Powertools' ``correlation_id``
(``log_job``; README "Logs: one job across every function"). The handlers decorate with
``inject_lambda_context(clear_state=True)``, so a warm container starts each invocation without the
keys of the one before.

The service name and the metrics namespace are the template's (``POWERTOOLS_SERVICE_NAME``, the
stack's name, and ``POWERTOOLS_METRICS_NAMESPACE``), read by Powertools as these objects are
created: the code names neither. Outside Lambda, whatever imports this first sets them from the
template (``query_relay_local.template.apply_powertools_environment``: the CLI and the tests).

X-Ray tracing is opt-in (template parameter ``Tracing``, handed to the functions as
``QUERY_RELAY_TRACING``): Powertools' Tracer imports the X-Ray SDK as it is created, even when
disabled, which added 250-340 ms to each handler's import here (README "Cold start"). Without tracing the
handlers are decorated by ``Untraced``, which imports nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

from aws_lambda_powertools import Logger, Metrics

H = TypeVar("H", bound=Callable[..., object])

# template.yaml sets it from the Tracing parameter: "Active" or "PassThrough".
TRACING_VARIABLE = "QUERY_RELAY_TRACING"


class HandlerTracer(Protocol):
    """What the handlers use of a tracer: a decorator that keeps the handler's signature."""

    def capture_lambda_handler(self, handler: H, /) -> H: ...


class Untraced:
    """What the handlers use of Powertools' Tracer, doing nothing (tracing is off)."""

    def capture_lambda_handler(self, handler: H, /) -> H:
        return handler


def tracing_active() -> bool:
    return os.environ.get(TRACING_VARIABLE) == "Active"


def _tracer() -> HandlerTracer:
    if not tracing_active():
        return Untraced()
    from aws_lambda_powertools import Tracer  # noqa: PLC0415 - the X-Ray SDK only when tracing

    # Its decorator wraps the handler in one that takes and returns what the handler does.
    return cast(HandlerTracer, Tracer())


logger = Logger()
tracer = _tracer()
metrics = Metrics()


def log_job(job_id: str, **keys: object) -> None:
    """From here on this invocation works for job ``job_id``: every line it logs carries the id as
    ``job_id`` and as the correlation id (an empty id, a job not known, leaves the correlation id
    as it was), and ``keys`` besides."""
    logger.append_keys(job_id=job_id, **keys)
    if job_id:
        logger.set_correlation_id(job_id)
