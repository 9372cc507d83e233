"""API Lambda: the HTTP API's routes (docs/contracts.md) wired to query_relay.api; nothing else."""

from __future__ import annotations

from http import HTTPStatus

from aws_lambda_powertools.event_handler import APIGatewayRestResolver

from query_relay.api import http, jobs, models, schedules
from query_relay.models import JobSpec

app = http.configure(APIGatewayRestResolver(enable_validation=True))


@app.post("/queries")
def start_query(spec: JobSpec) -> tuple[models.JobAccepted, HTTPStatus]:
    return jobs.start_job(spec), HTTPStatus.ACCEPTED


@app.get("/queries")
def list_queries(
    state: models.ExecutionStatus | None = None, limit: models.PageSize = 20, next_token: str | None = None
) -> models.JobPage:
    return jobs.list_jobs(state, limit, next_token)


@app.get("/queries/<job_id>")
def get_query(job_id: str) -> models.JobView:
    return jobs.describe_job(job_id)


@app.delete("/queries/<job_id>")
def cancel_query(job_id: str) -> models.JobView:
    return jobs.cancel_job(job_id)


@app.post("/schedules")
def create_schedule(
    request: models.ScheduleRequest,
) -> tuple[models.ScheduleView, HTTPStatus]:
    return schedules.create_schedule(request), HTTPStatus.CREATED


@app.get("/schedules")
def list_schedules(limit: models.PageSize = 20, next_token: str | None = None) -> models.SchedulePage:
    return schedules.list_schedules(limit, next_token)


@app.get("/schedules/<name>")
def get_schedule(name: str) -> models.ScheduleView:
    return schedules.get_schedule(name)


@app.post("/schedules/<name>/runs")
def backfill_schedule(
    name: str, request: models.BackfillRequest
) -> tuple[models.BackfillAccepted, HTTPStatus]:
    return schedules.backfill(name, request), HTTPStatus.ACCEPTED


@app.delete("/schedules/<name>")
def delete_schedule(name: str) -> models.ScheduleView:
    return schedules.delete_schedule(name)


lambda_handler = http.lambda_handler_of(app)
