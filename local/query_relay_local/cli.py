"""``query-relay``: run jobs through the whole state machine on the local stack, serve emulators, demo.

Exit status: 0 the job succeeded, 1 it failed, 2 bad usage or an invalid spec / connections file
(nothing was started). Progress goes to stderr; with ``--json`` stdout holds exactly one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

import httpx

from query_relay.exceptions import InvalidConnection, InvalidJobSpec
from query_relay.limits import check_spec_fits
from query_relay.models import (
    CATALOG_NAME_PATTERN,
    CatalogSpec,
    Connection,
    JobSpec,
    parse_connection,
    parse_job_spec,
)
from query_relay.providers import validate_job
from query_relay.windows import resolved_query
from query_relay_local.upstreams import LOOKER_CLIENT_ID, UPSTREAMS

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions.type_defs import HistoryEventTypeDef

    from query_relay_local.stack import LocalStack

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_CONNECTIONS_FILE = Path("connections.json")
PREVIEW_ROWS = 5
PREVIEW_WIDTH = 200
# The state machine enforces polling.timeout_seconds itself; this only guards against a stuck stack.
WAIT_MARGIN_SECONDS = 900


class UsageError(Exception):
    """Bad input found before anything started: reported on stderr, exit status 2."""


# --- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.command(args))
    except UsageError as error:
        print(f"query-relay: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("query-relay: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="query-relay",
        description="Run query-relay on this machine: the state machine and functions of template.yaml "
        "on an embedded AWS (moto), against real or emulated upstreams.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run one job spec through the whole state machine")
    run.add_argument("spec", type=Path, metavar="SPEC.json", help="the job spec (docs/contracts.md)")
    run.add_argument(
        "--connections",
        type=Path,
        metavar="FILE",
        help='connections file {"<name>": {...}} (default: ./connections.json when present)',
    )
    run.add_argument(
        "--out", type=Path, default=Path("out"), metavar="DIR", help="where results land (./out)"
    )
    run.add_argument("--json", action="store_true", help="print only the manifest (or the failure) as JSON")
    run.add_argument("--verbose", action="store_true", help="also show what the functions log")
    run.set_defaults(command=_run_command)

    emulate = commands.add_parser("emulate", help="serve an upstream emulator until Ctrl-C")
    emulate.add_argument("upstream", choices=sorted(UPSTREAMS), help="which upstream to emulate")
    emulate.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    emulate.add_argument(
        "--port", type=int, default=9200, help="port to listen on (9200; 0 picks a free one)"
    )
    emulate.add_argument(
        "--api-key",
        metavar="SECRET",
        help="require this secret: the ES|QL API key, the Veza API key, or the Looker client secret "
        f"(client id {LOOKER_CLIENT_ID!r}); default: accept any credentials",
    )
    emulate.set_defaults(command=_emulate_command)

    serve = commands.add_parser("serve", help="serve the HTTP API on the local stack until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (8080; 0 picks a free one)")
    serve.add_argument(
        "--connections",
        type=Path,
        metavar="FILE",
        help='connections file {"<name>": {...}} (default: ./connections.json when present)',
    )
    serve.add_argument(
        "--catalog-database",
        metavar="NAME",
        type=_catalog_database,
        help="a Glue database, made on the local stack, in which jobs' output.catalog may register results "
        "(the stack's CatalogDatabase; default: none)",
    )
    serve.add_argument("--verbose", action="store_true", help="also show what the functions log")
    serve.set_defaults(command=_serve_command)

    backfill = commands.add_parser(
        "backfill", help="run a schedule for past times, through the HTTP API (POST /schedules/NAME/runs)"
    )
    backfill.add_argument("name", metavar="NAME", help="the schedule")
    when = backfill.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--at", metavar="TIME", help="one past run's scheduled time (ISO 8601, e.g. 2026-11-25T01:00:00Z)"
    )
    when.add_argument("--from", dest="start", metavar="TIME", help="the first time of a range (with --to)")
    backfill.add_argument("--to", dest="end", metavar="TIME", help="the last time of a range (included)")
    backfill.add_argument(
        "--api",
        default="http://127.0.0.1:8080",
        metavar="URL",
        help="the API: query-relay serve's (default http://127.0.0.1:8080), or the deployed stage's "
        "(https://<id>.execute-api.<region>.amazonaws.com/v1; signed with your AWS credentials)",
    )
    backfill.set_defaults(command=_backfill_command)

    demo = commands.add_parser("demo", help="run sample jobs against the emulators and show the results")
    demo.add_argument(
        "--out", type=Path, default=Path("out"), metavar="DIR", help="where results land (./out)"
    )
    demo.add_argument("--verbose", action="store_true", help="also show what the functions log")
    demo.set_defaults(command=_demo_command)
    return parser


# --- run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A validated job spec and the one connection it names."""

    spec_document: dict[str, Any]
    spec: JobSpec
    connection_name: str
    connection_document: dict[str, Any]
    connection: Connection

    @classmethod
    def of(
        cls, spec_document: dict[str, Any], connection_name: str, connection_document: dict[str, Any]
    ) -> Job:
        connection = parse_connection(connection_name, connection_document)
        spec = parse_job_spec(spec_document)
        return cls(spec_document, spec, connection_name, connection_document, connection)


def _run_command(args: argparse.Namespace) -> int:
    job = load_job(args.spec, args.connections)
    check_out_dir(args.out)
    from query_relay_local.stack import LocalStack  # noqa: PLC0415 - moto loads slowly; not for --help

    catalog = job.spec.output.catalog
    # A job that registers its result: the local stack's CatalogDatabase is the one it names, made.
    overrides = {} if catalog is None else {"CatalogDatabase": catalog.database}
    with LocalStack(echo_logs=_echo(args.verbose), parameter_overrides=overrides) as stack:
        if catalog is not None:
            stack.client("glue").create_database(DatabaseInput={"Name": catalog.database})
        stack.load_connections({job.connection_name: job.connection_document})
        return run_job(stack, job, args.out, as_json=args.json)


def check_out_dir(out_dir: Path) -> None:
    """``--out`` must be a directory we can write into (or create), before the job runs."""
    existing = next((path for path in (out_dir, *out_dir.parents) if path.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"--out {out_dir}: {existing} exists and is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir}: {existing} is not writable")


def _echo(verbose: bool) -> TextIO | None:
    """With --verbose, what the functions log goes to stderr too, with one line per invocation."""
    if not verbose:
        return None
    logging.getLogger("query_relay_local.lambda_runtime").setLevel(logging.DEBUG)
    return sys.stderr


def load_job(spec_path: Path, connections_path: Path | None) -> Job:
    """Read and validate the spec and its connection before anything starts (UsageError if not)."""
    spec_document = _read_json_object(spec_path, "job spec")
    try:
        spec = parse_job_spec(spec_document)
        check_spec_fits(spec_document)
    except InvalidJobSpec as error:
        raise UsageError(f"{spec_path}: {error}") from None
    if connections_path is None and DEFAULT_CONNECTIONS_FILE.is_file():
        connections_path = DEFAULT_CONNECTIONS_FILE
    if connections_path is None:
        raise UsageError(
            f"{spec_path}: connection: no connection named {spec.connection!r} "
            f"(no --connections FILE given and no ./{DEFAULT_CONNECTIONS_FILE} here)"
        )
    connections = _read_connections(connections_path)
    if spec.connection not in connections:
        known = ", ".join(sorted(connections)) or "none"
        raise UsageError(
            f"{spec_path}: connection: no connection named {spec.connection!r} in {connections_path} "
            f"(it has: {known})"
        )
    document, connection = connections[spec.connection]
    try:
        validate_job(spec.connection, connection, resolved_query(spec))
    except (InvalidJobSpec, InvalidConnection) as error:
        raise UsageError(f"{spec_path}: {error}") from None
    return Job(spec_document, spec, spec.connection, document, connection)


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as stream:
            document = json.load(stream)
    except OSError as error:
        raise UsageError(f"{path}: cannot read the {what}: {error.strerror}") from None
    except RecursionError:
        raise UsageError(f"{path}: the {what} is nested too deeply to read") from None
    except (ValueError, UnicodeDecodeError) as error:
        # JSONDecodeError names the line and column, never the text around it (it may hold a secret).
        detail = (
            f"line {error.lineno} column {error.colno}: {error.msg}"
            if isinstance(error, json.JSONDecodeError)
            else ""
        )
        raise UsageError(f"{path}: the {what} is not valid JSON ({detail or 'not UTF-8 text'})") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path}: the {what} must be a JSON object, not {type(document).__name__}")
    return document


def _read_connections(path: Path) -> dict[str, tuple[dict[str, Any], Connection]]:
    documents = _read_json_object(path, "connections file")
    connections: dict[str, tuple[dict[str, Any], Connection]] = {}
    for name, document in documents.items():
        try:
            connections[name] = (document, parse_connection(name, document))
        except InvalidConnection as error:
            raise UsageError(f"{path}: {error}") from None
    return connections


def run_job(stack: LocalStack, job: Job, out_dir: Path, *, as_json: bool = False) -> int:
    """Run one job on a started stack, copy its result into ``out_dir`` and report it."""
    progress = Progress(sys.stderr)
    execution_arn = stack.start_job(job.spec_document)
    progress.say(
        f"started job {execution_arn.rsplit(':', 1)[1]} on {job.connection_name} ({job.connection.provider})"
    )
    final = stack.wait(
        execution_arn,
        timeout=job.spec.polling.timeout_seconds + WAIT_MARGIN_SECONDS,
        on_event=progress.on_event,
    )
    if final["status"] != "SUCCEEDED":
        failure = {
            "status": "FAILED",
            "error": final.get("error", final["status"]),
            "cause": final.get("cause", ""),
        }
        if as_json:
            print(json.dumps(failure))
        else:
            print(f"FAILED: {failure['error']}\n  cause: {failure['cause']}", file=sys.stderr)
        return EXIT_FAILED
    output = json.loads(final.get("output") or "{}")
    manifest_key: str = output["manifest_key"]
    manifest = json.loads(stack.s3.get_object(Bucket=output["bucket"], Key=manifest_key)["Body"].read())
    job_prefix = manifest_key.rpartition("/")[0] + "/"
    stack.download(job_prefix, out_dir)
    if as_json:
        print(json.dumps(manifest))
    else:
        _print_summary(manifest, output["bucket"], manifest_key, out_dir, sys.stdout)
        if job.spec.output.catalog is not None:
            _print_partition(stack, job.spec.output.catalog, manifest, sys.stdout)
    return EXIT_SUCCEEDED


def _print_partition(
    stack: LocalStack, catalog: CatalogSpec, manifest: Mapping[str, Any], out: TextIO
) -> None:
    """The job's table and partition as Glue now holds them (what Athena would read)."""
    glue = stack.client("glue")
    table = glue.get_table(DatabaseName=catalog.database, Name=catalog.table)["Table"]
    day = manifest["objects"][0]["key"].split("/dt=", 1)[1].split("/", 1)[0]
    partition = glue.get_partition(
        DatabaseName=catalog.database, TableName=catalog.table, PartitionValues=[day, manifest["job_id"]]
    )["Partition"]
    columns = ", ".join(f"{c['Name']} {c['Type']}" for c in table["StorageDescriptor"]["Columns"])
    print(f"  catalog     {catalog.database}.{catalog.table} ({columns})", file=out)
    location = partition["StorageDescriptor"]["Location"]
    print(f"  partition   dt={day}, job_id={manifest['job_id']} at {location}", file=out)
    # A hint printed, never run; the names are validated ([a-z0-9_] and the job id's pattern).
    athena = f"SELECT * FROM {catalog.database}.{catalog.table} WHERE dt = '{day}'"  # noqa: S608
    print(f"  in Athena   {athena} AND job_id = '{manifest['job_id']}'", file=out)


def _print_summary(
    manifest: Mapping[str, Any], bucket: str, manifest_key: str, out_dir: Path, out: TextIO
) -> None:
    compression = "" if manifest["compression"] == "none" else f", {manifest['compression']}"
    lines = [
        f"SUCCEEDED  job {manifest['job_id']}  ({manifest['provider']} via {manifest['connection']}, "
        f"{manifest['polls']} poll{'' if manifest['polls'] == 1 else 's'})",
        f"  landed in   s3://{bucket}/{manifest_key}",
        f"  copied to   {out_dir / manifest_key}",
        f"  rows        {manifest['row_count']}",
        f"  bytes       {manifest['byte_count']}  ({manifest['format']}{compression})",
        f"  objects     {len(manifest['objects'])}",
    ]
    if manifest["columns"]:
        lines.append("  columns     " + ", ".join(f"{c['name']} ({c['type']})" for c in manifest["columns"]))
    print("\n".join(lines), file=out)
    if manifest["objects"] and manifest["format"] == "parquet":
        _print_parquet_rows(out_dir / manifest["objects"][0]["key"], out)
    if manifest["objects"] and manifest["format"] in ("jsonl", "csv"):
        first = manifest["objects"][0]["key"]
        print(f"  first rows of {first.rpartition('/')[2]}:", file=out)
        with _open_text(out_dir / first, gzipped=manifest["compression"] == "gzip") as part:
            for _, raw_line in zip(range(PREVIEW_ROWS), part, strict=False):
                line = raw_line.rstrip("\n")
                print(f"    {line[:PREVIEW_WIDTH]}{'...' if len(line) > PREVIEW_WIDTH else ''}", file=out)


def _print_parquet_rows(path: Path, out: TextIO) -> None:
    """The first rows of a Parquet part, as pyarrow reads them (with their types)."""
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415 - the parquet extra; the preview only
    except ImportError:
        return
    part = pq.ParquetFile(path)
    print(f"  first rows of {path.name} ({part.metadata.num_row_groups} row group(s)):", file=out)
    for row in (
        part.read_row_group(0).slice(0, PREVIEW_ROWS).to_pylist() if part.metadata.num_row_groups else []
    ):
        line = ", ".join(
            f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"
            for name, value in row.items()
        )
        print(f"    {line[:PREVIEW_WIDTH]}{'...' if len(line) > PREVIEW_WIDTH else ''}", file=out)


@contextmanager
def _open_text(path: Path, *, gzipped: bool) -> Iterator[IO[str]]:
    with gzip.open(path, "rt", encoding="utf-8") if gzipped else path.open(encoding="utf-8") as stream:
        yield stream


class Progress:
    """Turns the execution's history events into one line each on ``out`` as they happen."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._started = time.monotonic()
        self._state = ""
        self._continued = False
        self._branches_landed = 0

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self._started:6.1f}s] {message}", file=self._out, flush=True)

    def on_event(self, event: HistoryEventTypeDef) -> None:
        message = self.describe(event)
        if message:
            self.say(message)

    def describe(self, event: HistoryEventTypeDef) -> str | None:
        kind = event["type"]
        if kind == "TaskStateEntered":
            self._state = event["stateEnteredEventDetails"]["name"]
            return {
                "Submit": "submitting",
                "Fetch": "fetching the result",
                "WriteManifest": "every branch landed: writing the manifest",
                "Cleanup": "cleaning up",
            }.get(self._state)
        if kind == "TaskStateExited":
            details = event["stateExitedEventDetails"]
            self._continued = details["name"] == "ContinueAsNew"
            if details["name"] == "FetchBranch":
                return self._describe_branch(details.get("output", "{}"))
            return self._describe_exit(details["name"], details.get("output", "{}"))
        if kind in ("LambdaFunctionFailed", "TaskFailed"):
            failure: Mapping[str, Any] = (
                event.get("lambdaFunctionFailedEventDetails") or event.get("taskFailedEventDetails") or {}
            )
            return f"{self._state} raised {failure.get('error', 'an error')}"
        if kind == "ExecutionSucceeded":
            return None if self._continued else "done"
        if kind in ("ExecutionFailed", "ExecutionTimedOut", "ExecutionAborted"):
            ending: Mapping[str, Any] = event.get("executionFailedEventDetails") or {}
            return f"failed: {ending.get('error', kind)}"
        return None

    def _describe_branch(self, output: str) -> str | None:
        """A parallel fetch's branch: it landed, or it stopped after a part and goes on."""
        state_document = json.loads(output or "{}")
        job, branch = state_document.get("job") or {}, state_document.get("branch") or {}
        if job.get("status") == "FETCHING":
            return (
                f"branch {branch.get('index')}: stopped after a whole part before its time ran out, going on"
            )
        self._branches_landed += 1
        branches = len((job.get("fetch_plan") or {}).get("branches", []))
        return f"branch {branch.get('index')} landed ({self._branches_landed} of {branches})"

    @staticmethod
    def _describe_exit(state: str, output: str) -> str | None:
        state_document = json.loads(output or "{}")
        if "error" in state_document:  # a caught failure passes through: Cleanup reports it
            return None
        job = state_document.get("job") or {}
        status, polls, wait = job.get("status"), job.get("polls"), job.get("wait_seconds")
        if state == "ContinueAsNew":
            return f"history budget spent: continuing as execution {job.get('next_execution')}"
        if state == "Submit":
            if status == "QUEUED":
                return f"every max_concurrent slot of the connection is taken: next try in {wait}s"
            if status == "DONE":
                return "submitted: finished at once (fast path)"
            if status == "FINISHED":
                return "submitted: finished"
            return f"submitted, first check in {wait}s"
        if state == "Poll":
            return (
                f"poll #{polls}: finished"
                if status == "FINISHED"
                else f"poll #{polls}: running, next check in {wait}s"
            )
        if state == "Fetch" and status == "SPLIT":
            plan = job.get("fetch_plan") or {}
            return (
                f"result split into {len(plan.get('branches', []))} branches: fetching "
                f"{plan.get('max_parallel')} at a time (a Map state, a Fetch per branch)"
            )
        if state == "Fetch" and status == "FETCHING":
            return "Fetch stopped after a whole part before its time ran out: the next one goes on"
        if state == "WriteManifest" and status == "DONE":
            return f"manifest written: {(job.get('result') or {}).get('row_count')} rows"
        return None


# --- emulate ---------------------------------------------------------------------------------------


def _emulate_command(args: argparse.Namespace) -> int:
    upstream = UPSTREAMS[args.upstream]
    emulator = upstream.start(args.api_key)
    base_url = emulator.start(args.host, args.port)
    auth = "requires the given secret" if args.api_key else "accepts any credentials"
    print(f"{upstream.title} emulator at {base_url} ({auth}); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()  # serve until interrupted
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        emulator.stop()
    return EXIT_SUCCEEDED


# --- serve ---------------------------------------------------------------------------------------


def _serve_command(args: argparse.Namespace) -> int:
    connections_path: Path | None = args.connections
    if connections_path is None and DEFAULT_CONNECTIONS_FILE.is_file():
        connections_path = DEFAULT_CONNECTIONS_FILE
    documents = (
        {name: document for name, (document, _) in _read_connections(connections_path).items()}
        if connections_path
        else {}
    )
    from query_relay_local.api_server import serve_forever  # noqa: PLC0415 - moto loads slowly
    from query_relay_local.scheduler import Firing, LocalScheduler  # noqa: PLC0415
    from query_relay_local.stack import LocalStack  # noqa: PLC0415

    def fired(firing: Firing) -> None:
        when = f"{firing.scheduled_time:%Y-%m-%dT%H:%M:%SZ}"
        outcome = "started" if firing.error is None else f"not started ({firing.error})"
        print(f"schedule {firing.schedule}: its {when} run {outcome}", flush=True)

    database: str | None = args.catalog_database
    overrides = {} if database is None else {"CatalogDatabase": database}
    with (
        LocalStack(echo_logs=_echo(args.verbose), parameter_overrides=overrides) as stack,
        LocalScheduler(stack, on_fire=fired),
    ):
        stack.load_connections(documents)
        print(f"connections: {', '.join(sorted(documents)) or 'none'}", flush=True)
        if database is not None:
            stack.client("glue").create_database(DatabaseInput={"Name": database})
            print(
                f"catalog database: {database} (jobs' output.catalog may register results there)", flush=True
            )
        print("schedules fire as EventBridge Scheduler fires them (cron, rate, at; time zones)", flush=True)
        serve_forever(stack, args.host, args.port)
    return EXIT_SUCCEEDED


def _catalog_database(text: str) -> str:
    if not re.fullmatch(CATALOG_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: lower-case letters, digits and '_' only (Athena's names)"
        )
    return text


# --- backfill --------------------------------------------------------------------------------------


def _backfill_command(args: argparse.Namespace) -> int:
    if (args.start is None) != (args.end is None):
        raise UsageError("backfill: --from and --to go together")
    body = {"scheduled_time": args.at} if args.at else {"from": args.start, "to": args.end}
    url = f"{args.api.rstrip('/')}/schedules/{quote(args.name, safe='')}/runs"
    request = httpx.Request("POST", url, json=body)
    if ".execute-api." in request.url.host:
        request = signed(request)
    try:
        with httpx.Client(timeout=60) as client:
            response = client.send(request)
    except httpx.HTTPError as error:
        raise UsageError(f"backfill: the API at {args.api} did not answer ({type(error).__name__})") from None
    if response.status_code == HTTPStatus.BAD_REQUEST:
        raise UsageError(f"backfill: {response.json().get('message', response.text)}")
    if response.status_code != HTTPStatus.ACCEPTED:
        print(f"query-relay: backfill: HTTP {response.status_code}: {response.text[:500]}", file=sys.stderr)
        return EXIT_FAILED
    for run in response.json()["runs"]:
        state = "started" if run["started"] else "exists already: not started again"
        print(f"{run['job_id']}  {run['scheduled_time']}  {state}")
    return EXIT_SUCCEEDED


def signed(request: httpx.Request) -> httpx.Request:
    """The request signed with SigV4 for API Gateway (execute-api), with the default credentials
    and the Region in the API's host name (IAM auth: README "HTTP API")."""
    import boto3  # noqa: PLC0415 - only for a deployed API
    from botocore.auth import SigV4Auth  # noqa: PLC0415
    from botocore.awsrequest import AWSRequest  # noqa: PLC0415

    credentials = boto3.Session().get_credentials()
    if credentials is None:
        raise UsageError("backfill: no AWS credentials to sign the request with")
    region = request.url.host.split(".")[2]
    headers = {"Content-Type": request.headers["Content-Type"]}
    aws_request = AWSRequest(
        method=request.method, url=str(request.url), data=request.content, headers=headers
    )
    SigV4Auth(credentials, "execute-api", region).add_auth(aws_request)
    return httpx.Request(
        request.method, request.url, content=request.content, headers=dict(aws_request.headers)
    )


# --- demo ------------------------------------------------------------------------------------------


DEMO_FETCH_BRANCH_MIN_BYTES = 16 * 1024
DEMO_DATABASE = "demo"


def _demo_command(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    from query_relay_local.stack import LocalStack  # noqa: PLC0415 - moto loads slowly

    failures = 0
    with ExitStack() as running:
        # Results of a few hundred KB split as large ones do, so that the demo shows a parallel fetch.
        overrides = {
            "FetchBranchMinBytes": str(DEMO_FETCH_BRANCH_MIN_BYTES),
            "CatalogDatabase": DEMO_DATABASE,
        }
        stack = running.enter_context(
            LocalStack(echo_logs=_echo(args.verbose), parameter_overrides=overrides)
        )
        # The database a Parquet job registers its result in (the stack's CatalogDatabase).
        stack.client("glue").create_database(DatabaseInput={"Name": DEMO_DATABASE})
        print(
            f"local stack at {stack.endpoint_url} (FetchBranchMinBytes {DEMO_FETCH_BRANCH_MIN_BYTES} "
            "bytes, not 64 MiB: Snowflake's and Databricks' small results fetch in parallel)\n"
        )
        for upstream in UPSTREAMS.values():
            secret = upstream.new_secret()
            emulator = running.enter_context(upstream.start(secret))
            connection_name = f"{upstream.name}-demo"
            connection = upstream.connection(emulator.base_url, secret)
            stack.load_connections({connection_name: connection})
            print(f"### {upstream.title}: emulator at {emulator.base_url}\n", flush=True)
            for number, demo_job in enumerate(upstream.demo_jobs, start=1):
                print(f"== {upstream.name} {number}. {demo_job.title}", flush=True)
                emulator.config.query_seconds = demo_job.query_seconds  # type: ignore[attr-defined]
                spec = {"connection": connection_name, **demo_job.spec}
                if run_job(stack, Job.of(spec, connection_name, connection), args.out) != EXIT_SUCCEEDED:
                    failures += 1
                print(flush=True)
        failures += _demo_schedules(stack, "esql-demo")
    print(f"demo: {failures} job(s) failed" if failures else "demo finished", file=sys.stderr)
    return EXIT_FAILED if failures else EXIT_SUCCEEDED


# A schedule's query that lands its run's own window as a row (query_relay.windows).
DEMO_WINDOW_QUERY = {
    "query": "FROM employees | EVAL since = ?since, until = ?until | KEEP since, until | LIMIT 1",
    "params": [{"since": "{{window_start}}"}, {"until": "{{window_end}}"}],
}


def _demo_schedules(stack: LocalStack, connection: str) -> int:
    """Schedules through the HTTP API: a backfill of a per-minute schedule's last three runs, each
    querying its own window, and an hourly rate schedule fired at once by the local scheduler (as
    Scheduler runs a rate schedule when it is created). The runs that failed."""
    from query_relay_local.api_server import LocalApiServer  # noqa: PLC0415
    from query_relay_local.scheduler import Firing, LocalScheduler  # noqa: PLC0415

    def schedule(name: str, expression: str) -> dict[str, Any]:
        spec = {"connection": connection, "query": DEMO_WINDOW_QUERY, "output": {"format": "csv"}}
        return {"name": name, "expression": expression, "timezone": "UTC", "spec": spec}

    print("### Schedules: each run queries its own window\n", flush=True)
    job_ids: list[str] = []
    with LocalApiServer(stack) as server, httpx.Client(base_url=server.base_url, timeout=30) as api:
        print(
            "== a schedule every minute, cron(* * * * ? *), backfilled over its last three runs", flush=True
        )
        api.post("/schedules", json=schedule("demo-every-minute", "cron(* * * * ? *)")).raise_for_status()
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        window = {
            "from": f"{now - timedelta(minutes=3):%Y-%m-%dT%H:%M:%SZ}",
            "to": f"{now - timedelta(minutes=1):%Y-%m-%dT%H:%M:%SZ}",
        }
        runs = api.post("/schedules/demo-every-minute/runs", json=window).raise_for_status().json()["runs"]
        job_ids += [run["job_id"] for run in runs]
        api.delete("/schedules/demo-every-minute").raise_for_status()  # no more runs while the demo goes on
        failures = _show_runs(stack, job_ids)
        print(
            "\n== an hourly schedule, rate(1 hour): the local scheduler fires its first run at once",
            flush=True,
        )
        fired: list[Firing] = []
        with LocalScheduler(stack, on_fire=fired.append):
            api.post("/schedules", json=schedule("demo-hourly", "rate(1 hour)")).raise_for_status()
            deadline = time.monotonic() + 30
            while not fired and time.monotonic() < deadline:
                time.sleep(0.2)
        api.delete("/schedules/demo-hourly").raise_for_status()
    if not fired:
        print("the hourly schedule did not fire", file=sys.stderr)
        return failures + 1
    when = f"{fired[0].scheduled_time:%Y-%m-%dT%H:%M:%SZ}"
    print(f"  fired for {when}", flush=True)
    return failures + _show_runs(stack, [f"demo-hourly-{when.replace(':', '')}"])


def _show_runs(stack: LocalStack, job_ids: list[str]) -> int:
    """Wait for each scheduled run and show the window its query landed; how many failed."""
    failures = 0
    for job_id in job_ids:
        final = stack.wait(stack.execution_arn(job_id), timeout=120)
        if final["status"] != "SUCCEEDED":
            print(f"  {job_id}: {final['status']} {final.get('error', '')}", flush=True)
            failures += 1
            continue
        output = json.loads(final["output"])
        manifest = json.loads(
            stack.s3.get_object(Bucket=output["bucket"], Key=output["manifest_key"])["Body"].read()
        )
        text = stack.s3.get_object(Bucket=output["bucket"], Key=manifest["objects"][0]["key"])["Body"].read()
        row = text.decode().splitlines()[1]
        since, until = row.split(",")
        print(f"  {job_id}: its query's window {since} .. {until}", flush=True)
    return failures


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
