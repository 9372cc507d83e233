"""Powertools Logger, Tracer and Metrics, created once and imported everywhere."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "query-relay"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="QueryRelay", service=SERVICE)
