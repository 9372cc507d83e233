"""Powertools Logger, Tracer and Metrics, created once and imported everywhere."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "query-relay"
# template.yaml sets POWERTOOLS_METRICS_NAMESPACE for every function; tools outside Lambda get this.
DEFAULT_METRICS_NAMESPACE = "QueryRelay"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_METRICS_NAMESPACE), service=SERVICE
)
