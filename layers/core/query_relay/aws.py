"""boto3 clients, created once per container (the local stack empties these caches like a cold start)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_glue import GlueClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_scheduler import EventBridgeSchedulerClient
    from mypy_boto3_stepfunctions import SFNClient

_RETRIES = Config(retries={"mode": "standard"})


@cache
def sfn() -> SFNClient:
    return boto3.client("stepfunctions", config=_RETRIES)


@cache
def s3() -> S3Client:
    # SigV4 presigned links work in every region (SigV2 ones do not).
    return boto3.client("s3", config=_RETRIES.merge(Config(signature_version="s3v4")))


@cache
def events() -> EventBridgeClient:
    return boto3.client("events", config=_RETRIES)


@cache
def scheduler() -> EventBridgeSchedulerClient:
    return boto3.client("scheduler", config=_RETRIES)


@cache
def dynamodb() -> DynamoDBClient:
    return boto3.client("dynamodb", config=_RETRIES)


@cache
def glue() -> GlueClient:
    return boto3.client("glue", config=_RETRIES)
