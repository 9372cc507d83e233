"""Sample consumer Lambda: a manifest landed (S3 "Object Created" via EventBridge, key suffix
_manifest.json); read it and log what the result holds, under the job's id as correlation id (as
the workflow's own lines). A real consumer starts here."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from query_relay.api.jobs import read_manifest
from query_relay.observability import log_job, logger, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@event_source(data_class=EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    bucket, key = str(event.detail["bucket"]["name"]), str(event.detail["object"]["key"])
    manifest = read_manifest(bucket, key)
    log_job(manifest.job_id)
    keys = [entry.key for entry in manifest.objects]
    logger.info(
        "result ready",
        extra={
            "rows": manifest.row_count,
            "bytes": manifest.byte_count,
            "keys": keys,
        },
    )
    return {"job_id": manifest.job_id, "row_count": manifest.row_count, "keys": keys}
