"""Parallel fetch of a Snowflake result split into partitions, next to one Fetch and the baselines.

    .venv/bin/python -m bench.parallel_fetch [--mb 200] [--partitions 40] [--branches 8]
                                             [--max-parallel 2,4] [--formats jsonl/none,csv/gzip]
                                             [--part-mb 128] [--wire-threads N]

Everything in one run, as bench/fetch.py does it (whose helpers this reuses): moto's S3 and
Secrets Manager (``moto_server``) and a fast source in their own processes, Fetch in child
processes that run ``query_relay.workflow.fetch`` exactly as the Fetch Lambda does (the connection
read from the emulated Secrets Manager, parts into the emulated S3).

The result: ``SELECT n, square, label, ratio FROM numbers`` from the Snowflake emulator
(local/query_relay_local/emulators/snowflake.py, in this process, only to render it), sized to about
``--mb`` MB of JSON in ``--partitions`` partitions (a first statement measures the JSON per row,
from its partitionInfo). Its ResultSet (``GET /api/v2/statements/{handle}``, with partition 0's
rows) and every later partition (``?partition=N``, gzipped: ``Content-Encoding: gzip``) are kept as
the raw bytes the emulator sent, with its status and headers, and served from memory by a minimal
threaded HTTP server in its own process (the fast source; auth is ignored), so the emulator's
rendering speed is never the limit. Every rate is MB (10^6 bytes) per second of the result's
uncompressed upstream JSON, over the wall time the parent measures.

Measured, in this order:

- the wire: a plain httpx streaming download of the ResultSet and every partition (raw bytes as
  sent, discarded), one at a time, then ``--wire-threads`` at once (threads, one client);
- the S3 sink: the JSON's bytes uploaded to the emulated S3 as Fetch uploads a part
  (bench/fetch.py's sink baseline), in one upload, then in ``--wire-threads`` uploads at once;
- one Fetch: a connection with ``max_parallel_fetch: 1``, so one ``workflow.fetch`` reads the
  whole result (per ``--formats``);
- a parallel fetch for each ``--max-parallel`` k: the first ``workflow.fetch`` (SPLIT, with
  FETCH_BRANCH_MIN_BYTES set so that the plan has ``--branches`` branches), then the branches,
  at most k at a time (the FetchBranches Map's MaxConcurrency), then the manifest call. Process A
  (one worker) makes the first and the last call; the branches run in a pool of k worker
  processes that are reused from branch to branch (warm Lambda containers), each warmed up first.
  The wall time covers split + branches + manifest; the manifest is then checked (row count,
  parts in order, each branch's rows as partitionInfo says).

Warm workers: every worker process first fetches a small result (2 partitions, from the fast
source, with the same connection and format): its boto3 clients, imports and the connection's
cache are then warm, as in a container an earlier invocation used. A cold start's cost is
bench/cold_start.py's.

Cores: each process's CPU seconds during a measurement (every thread; /proc, in 10 ms ticks: coarse
for rows that last a fraction of a second) per wall second, and what other processes on the machine
used meanwhile (/proc/stat: the machine's busy time minus ours).
The machine's cores are shared by every process here (the Fetch workers, moto, the source), so a
speedup measured here is bounded by the cores, not by the method. The last lines extrapolate, from
the measured per-branch MB per CPU second, what the branches would land with a vCPU each (as on
Lambda), bounded by the measured wire and sink baselines: an extrapolation, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import heapq
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from bench.fetch import (
    _BIN,
    BUCKET,
    MB,
    MIB,
    SECRET_PREFIX,
    SERVER_PIDS,
    WRITE_SLICE,
    _client,
    _cpu_seconds,
    _empty_bucket,
    _fetch_environment,
    _mb_per_s,
    _OneWayReader,
    moto_s3,
    serving_process,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

STATEMENT = "SELECT n, square, label, ratio FROM numbers"  # no WHERE / ORDER BY: the rows stay lazy
WARM_UP_ROWS = 2000  # the small result each worker fetches first: 2 partitions (one gzipped)
WARM_UP_PARTITIONS = 2
PROBE_BYTES_PER_ROW = 64  # only sizes the first statement, whose partitionInfo sizes the real one
STATEMENTS_PATH = "/api/v2/statements/"
# Headers of the emulator's answers that the fast source does not replay (its own or hop-by-hop).
_NOT_REPLAYED = frozenset(
    {"server", "date", "connection", "keep-alive", "transfer-encoding", "content-length"}
)
_PART_NAME = re.compile(r"part-(\d{5})(?:-(\d{5}))?\.")
_BARRIER_SECONDS = 300.0
SINK_KEYS = "bench/sink-{}.json"


# --- the result, rendered once by the emulator -----------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One answer as the emulator sent it: the ResultSet (partition 0, with its rows) or a later
    partition; its body is kept in ``file``, exactly as it came off the wire."""

    status: int
    headers: list[tuple[str, str]]
    file: str
    wire_bytes: int  # as sent (gzip for partitions >= 1)
    json_bytes: int  # uncompressed
    rows: int  # partitionInfo's rowCount


@dataclass(frozen=True)
class Statement:
    handle: str
    pages: list[Page]
    planned_bytes: int  # the partitions' uncompressedSize (partitionInfo: what the fetch plan reads)

    @property
    def rows(self) -> int:
        return sum(page.rows for page in self.pages)

    @property
    def json_bytes(self) -> int:
        return sum(page.json_bytes for page in self.pages)

    @property
    def wire_bytes(self) -> int:
        return sum(page.wire_bytes for page in self.pages)

    def json_bytes_of(self, first: int, end: int) -> int:
        return sum(page.json_bytes for page in self.pages[first:end])

    def rows_of(self, first: int, end: int) -> int:
        return sum(page.rows for page in self.pages[first:end])


@dataclass(frozen=True)
class Rendered:
    result: Statement
    warm_up: Statement
    json_path: Path  # the result's uncompressed JSON, every answer in order (the sink's bytes)
    render_seconds: float


def _submit(client: httpx.Client, partition_rows: int, numbers_rows: int, statement: str) -> str:
    config = {"partition_rows": partition_rows, "numbers_rows": numbers_rows}
    client.post("/_emulator/config", json=config).raise_for_status()
    response = client.post("/api/v2/statements", params={"async": "true"}, json={"statement": statement})
    response.raise_for_status()
    handle: str = response.json()["statementHandle"]
    return handle


def _partition_info(client: httpx.Client, handle: str) -> list[dict[str, int]]:
    response = client.get(f"{STATEMENTS_PATH}{handle}")
    response.raise_for_status()
    info: list[dict[str, int]] = response.json()["resultSetMetaData"]["partitionInfo"]
    return info


def _download(
    client: httpx.Client, handle: str, workdir: Path, json_sink: io.BufferedWriter | None
) -> Statement:
    """Keep every answer of the finished statement as sent; append its JSON to ``json_sink``."""
    info: list[dict[str, int]] = []
    pages: list[Page] = []
    number = 0
    while number == 0 or number < len(info):
        params = {} if number == 0 else {"partition": str(number)}
        with client.stream("GET", f"{STATEMENTS_PATH}{handle}", params=params) as response:
            raw = b"".join(response.iter_raw(MIB))
            status, headers = response.status_code, list(response.headers.multi_items())
            encoding = response.headers.get("content-encoding", "")
        if status != 200:
            raise RuntimeError(f"the emulator answered HTTP {status} for partition {number} of {handle}")
        if encoding not in ("", "gzip"):
            raise RuntimeError(f"unexpected Content-Encoding {encoding!r}")
        body = gzip.decompress(raw) if encoding == "gzip" else raw
        if number == 0:
            info = json.loads(body)["resultSetMetaData"]["partitionInfo"]
        name = f"{handle}-{number}.body"
        (workdir / name).write_bytes(raw)
        if json_sink is not None:
            json_sink.write(body)
        kept = [(key, value) for key, value in headers if key.lower() not in _NOT_REPLAYED]
        pages.append(Page(status, kept, name, len(raw), len(body), info[number]["rowCount"]))
        number += 1
    planned = sum(part["uncompressedSize"] for part in info)
    return Statement(handle, pages, planned)


def render(workdir: Path, size_mb: int, partitions: int) -> Rendered:
    """The result and the warm-up result, rendered by the Snowflake emulator and kept as sent."""
    from query_relay_local.emulators.snowflake import SnowflakeEmulator  # noqa: PLC0415 - parent only

    started = time.perf_counter()
    target = size_mb * MB
    json_path = workdir / "result.json"
    with SnowflakeEmulator() as emulator, httpx.Client(base_url=emulator.base_url, timeout=600) as client:
        # A first statement measures the JSON per row (partitionInfo, estimated from samples).
        probe_rows = max(partitions, target // PROBE_BYTES_PER_ROW)
        probe = _submit(client, math.ceil(probe_rows / partitions), probe_rows, STATEMENT)
        probe_bytes = sum(part["uncompressedSize"] for part in _partition_info(client, probe))
        rows = max(partitions, round(probe_rows * target / probe_bytes))
        handle = _submit(client, math.ceil(rows / partitions), rows, STATEMENT)
        with json_path.open("wb") as json_sink:
            result = _download(client, handle, workdir, json_sink)
        warm_up_statement = f"{STATEMENT} LIMIT {WARM_UP_ROWS}"
        warm_handle = _submit(client, WARM_UP_ROWS // WARM_UP_PARTITIONS, WARM_UP_ROWS, warm_up_statement)
        warm_up = _download(client, warm_handle, workdir, None)
    return Rendered(result, warm_up, json_path, time.perf_counter() - started)


# --- the fast source -------------------------------------------------------------------------------


class _StatementHandler(BaseHTTPRequestHandler):
    """``GET /api/v2/statements/<handle>[?partition=N]``: the emulator's answer, replayed."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Fetch's client expects
    # handle -> answers by partition: (status, headers, body); set in the server's process
    answers: dict[str, list[tuple[int, list[tuple[str, str]], memoryview]]] = {}

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        pages = None
        if parts.path.startswith(STATEMENTS_PATH):
            pages = self.answers.get(unquote(parts.path.removeprefix(STATEMENTS_PATH)))
        if pages is None:
            body = b'{"code":"000709","message":"Statement not found"}'
            self._reply(404, [("Content-Type", "application/json")], memoryview(body))
            return
        raw = parse_qs(parts.query).get("partition", ["0"])[0]
        number = int(raw) if raw.isdigit() else -1
        if not 0 <= number < len(pages):
            body = b'{"code":"390400","message":"partition out of range"}'
            self._reply(400, [("Content-Type", "application/json")], memoryview(body))
            return
        self._reply(*pages[number])

    def _reply(self, status: int, headers: list[tuple[str, str]], body: memoryview) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for start in range(0, len(body), WRITE_SLICE):
                self.wfile.write(body[start : start + WRITE_SLICE])
        except (BrokenPipeError, ConnectionResetError):
            # A branch that does not read partition 0 closes the ResultSet once it has its metadata.
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request on stderr would interleave with the report."""


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that closed its connection (a branch drops the ResultSet once it has its
        metadata; a closed keep-alive connection) is no error; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve_statements(index_path: str, port: int) -> None:
    """Runs in its own process: load every answer into memory, then serve them until terminated."""
    index = json.loads(Path(index_path).read_text())
    folder = Path(index_path).parent
    _StatementHandler.answers = {
        handle: [
            (
                page["status"],
                [tuple(pair) for pair in page["headers"]],
                memoryview((folder / page["file"]).read_bytes()),
            )
            for page in pages
        ]
        for handle, pages in index.items()
    }
    with _QuietServer(("127.0.0.1", port), _StatementHandler) as server:
        server.serve_forever()


@contextlib.contextmanager
def fast_source(workdir: Path, statements: list[Statement]) -> Iterator[str]:
    index = {
        statement.handle: [
            {"status": page.status, "headers": page.headers, "file": page.file} for page in statement.pages
        ]
        for statement in statements
    }
    index_path = workdir / "index.json"
    index_path.write_text(json.dumps(index))
    with serving_process(serve_statements, index_path, "source") as url:
        yield url


# --- what a measurement reports --------------------------------------------------------------------


def _cpu_now(pids: dict[str, int]) -> dict[str, float]:
    return {name: _cpu_seconds(pid) for name, pid in pids.items()}


@dataclass
class Row:
    """One line of the table: a wall time over the result's JSON, and the CPU each process used."""

    label: str
    json_bytes: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds during the measurement, by process
    machine_cpu: float = 0.0  # CPU seconds the whole machine was busy meanwhile (/proc/stat)
    note: str = ""

    @property
    def mb_per_s(self) -> float:
        return _mb_per_s(self.json_bytes, self.seconds)

    def cores(self) -> str:
        used = ", ".join(f"{name} {cpu / self.seconds:.2f}" for name, cpu in self.cpu.items())
        ours = sum(self.cpu.values())
        others = max(0.0, self.machine_cpu - ours) / self.seconds
        return f"{used} = {ours / self.seconds:.2f} (+ {others:.2f} by other processes)"


def _machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine has been busy so far (/proc/stat's first line)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _measured(label: str, json_bytes: int, pids: dict[str, int]) -> Iterator[Row]:
    """A Row whose seconds and CPU are filled in when the block ends."""
    row = Row(label, json_bytes, 0.0, {})
    before, machine_before = _cpu_now(pids), _machine_cpu_seconds()
    started = time.perf_counter()
    yield row
    row.seconds = time.perf_counter() - started
    after, row.machine_cpu = _cpu_now(pids), _machine_cpu_seconds() - machine_before
    row.cpu = {name: after[name] - before[name] for name in pids}


# --- the baselines ---------------------------------------------------------------------------------


def _drain(client: httpx.Client, handle: str, number: int) -> int:
    params = {} if number == 0 else {"partition": str(number)}
    with client.stream("GET", f"{STATEMENTS_PATH}{handle}", params=params) as response:
        response.raise_for_status()
        return sum(len(chunk) for chunk in response.iter_raw(MIB))


def wire(source_url: str, statement: Statement, threads: int) -> Row:
    """The ResultSet and every partition downloaded as sent (raw, discarded), ``threads`` at once."""
    label = "wire: 1 download at a time" if threads == 1 else f"wire: {threads} downloads at once"
    pids = {"bench": os.getpid(), "source": SERVER_PIDS["source"]}
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    numbers = range(len(statement.pages))
    with httpx.Client(base_url=source_url, timeout=600, limits=limits) as client:
        _drain(client, statement.handle, len(statement.pages) - 1)  # a connection, as Fetch opens one
        with _measured(label, statement.json_bytes, pids) as row:
            if threads == 1:
                received = sum(_drain(client, statement.handle, number) for number in numbers)
            else:
                with ThreadPoolExecutor(threads) as pool:
                    received = sum(pool.map(lambda number: _drain(client, statement.handle, number), numbers))
    if received != statement.wire_bytes:
        raise RuntimeError(
            f"the fast source sent {received} bytes where the emulator sent {statement.wire_bytes}"
        )
    row.note = f"{statement.wire_bytes / MB:.1f} MB on the wire"
    return row


class _Slice(io.RawIOBase):
    """``length`` bytes of a file from ``start``, read front to back only (as _OneWayReader)."""

    def __init__(self, file: io.FileIO, start: int, length: int) -> None:
        super().__init__()
        file.seek(start)
        self._reader = _OneWayReader(file)
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")[: self._left]
        count = self._reader.readinto(view)
        self._left -= count
        return count


def sink(s3_url: str, json_path: Path, uploads: int) -> Row:
    """The JSON's bytes into the emulated S3 as Fetch uploads a part (bench/fetch.py's sink_upload:
    boto3's managed transfer with Fetch's TransferConfig, from a stream that cannot seek), in one
    upload or ``uploads`` at once, each a share of the bytes (threads, one client)."""
    from query_relay.results import upload_config  # noqa: PLC0415 - as sink_upload imports it

    size = json_path.stat().st_size
    pids = {"bench": os.getpid(), "moto": SERVER_PIDS["moto"]}
    config = upload_config()
    s3 = _client("s3", s3_url)
    share = math.ceil(size / uploads)

    def upload(index: int) -> None:
        start = index * share
        with json_path.open("rb", buffering=0) as file:
            body = io.BufferedReader(_Slice(file, start, min(share, size - start)))
            s3.upload_fileobj(body, BUCKET, SINK_KEYS.format(index), Config=config)

    label = "S3 sink: 1 upload" if uploads == 1 else f"S3 sink: {uploads} uploads at once"
    with _measured(label, size, pids) as row, ThreadPoolExecutor(uploads) as pool:
        list(pool.map(upload, range(uploads)))
    _empty_bucket(s3)
    return row


# --- the Fetch workers -----------------------------------------------------------------------------


_BARRIER: Barrier | None = None


def _warm_up_worker(environment: dict[str, str], warm_up: dict[str, Any], barrier: Barrier) -> None:
    """A pool worker's start (in its own process): the Fetch Lambda's environment and imports,
    then a small fetch (a warm container: clients, imports, the connection's cache)."""
    global _BARRIER  # noqa: PLW0603 - the worker's own, set once
    _BARRIER = barrier
    os.environ.update(environment)
    from query_relay import workflow  # noqa: PLC0415 - the worker's own imports are part of its start

    event = copy.deepcopy(warm_up)
    event["job"]["job_id"] = f"{event['job']['job_id']}-{os.getpid()}"
    workflow.fetch(event)


def _started() -> int:
    """Returns once every worker of the pool has started and warmed up: each runs one of these."""
    assert _BARRIER is not None
    _BARRIER.wait(_BARRIER_SECONDS)
    return os.getpid()


def _step(event: dict[str, Any]) -> dict[str, Any]:
    """One invocation of the Fetch Lambda: ``workflow.fetch(event)``, timed in the worker."""
    from query_relay import workflow  # noqa: PLC0415 - imported at the worker's start already

    cpu_started, started = time.process_time(), time.perf_counter()
    job = workflow.fetch(event)
    return {
        "job": job,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "pid": os.getpid(),
    }


@contextlib.contextmanager
def warm_workers(
    environment: dict[str, str], warm_up: dict[str, Any], count: int
) -> Iterator[tuple[ProcessPoolExecutor, list[int]]]:
    """``count`` worker processes (spawned fresh, then reused task after task), all started and
    warmed up before this yields; with their pids."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    with ProcessPoolExecutor(
        max_workers=count,
        mp_context=context,
        initializer=_warm_up_worker,
        initargs=(environment, warm_up, barrier),
    ) as pool:
        # Each submit finds no idle worker and spawns one; each waits for the others at the barrier.
        pids = [future.result() for future in [pool.submit(_started) for _ in range(count)]]
        if len(set(pids)) != count:
            raise RuntimeError(f"{count} workers were asked for, {len(set(pids))} started")
        yield pool, pids


# --- jobs and their events -------------------------------------------------------------------------


def _job(name: str, connection: str, handle: str, status: str = "FINISHED") -> dict[str, Any]:
    submitted = datetime.now(UTC)
    return {
        "job_id": name,
        "connection": connection,
        "provider": "snowflake",
        "upstream_id": handle,
        "status": status,
        "submitted_at": submitted.isoformat(),
        "deadline": (submitted + timedelta(hours=1)).isoformat(),
    }


def _spec(connection: str, output_format: str, compression: str) -> dict[str, Any]:
    return {
        "connection": connection,
        "query": {"statement": STATEMENT, "warehouse": "COMPUTE_WH"},
        "output": {"format": output_format, "compression": compression, "prefix": "bench/"},
    }


def fetch_event(
    connection: str, handle: str, output_format: str, compression: str, name: str
) -> dict[str, Any]:
    return {
        "spec": _spec(connection, output_format, compression),
        "execution": name,
        "execution_arn": None,
        "job": _job(name, connection, handle),
    }


def branch_warm_up(
    connection: str, warm_up: Statement, output_format: str, compression: str
) -> dict[str, Any]:
    """A branch of the small result (its every partition): what a branch worker warms up with."""
    name = f"warm-up-branch-{connection}-{output_format}-{compression}"
    return {
        "spec": _spec(connection, output_format, compression),
        "execution": name,
        "execution_arn": None,
        "job": _job(name, connection, warm_up.handle, status="SPLIT"),
        "branch": {"index": 0, "first": 0, "end": len(warm_up.pages)},
    }


def save_connection(s3_url: str, name: str, base_url: str, max_parallel_fetch: int) -> None:
    """Store (or repoint) the Snowflake connection ``name`` (bearer auth: the source ignores it)."""
    secrets = _client("secretsmanager", s3_url)
    document = {
        "provider": "snowflake",
        "base_url": base_url,
        "auth": {"type": "bearer", "token": "bench"},
        "max_parallel_fetch": max_parallel_fetch,
    }
    try:
        secrets.create_secret(Name=SECRET_PREFIX + name, SecretString=json.dumps(document))
    except secrets.exceptions.ResourceExistsException:
        secrets.put_secret_value(SecretId=SECRET_PREFIX + name, SecretString=json.dumps(document))


def _connection_name(max_parallel: int) -> str:
    return f"bench-snowflake-x{max_parallel}"


# --- the manifest's check --------------------------------------------------------------------------


def check_manifest(s3: Any, job: dict[str, Any], result: Statement, plan: list[dict[str, int]] | None) -> str:
    """What is wrong with the landed result ('' when nothing): the manifest's row count, its parts'
    rows, and their keys in order (``part-<n>``, or ``part-<branch>-<n>`` with each branch's rows
    those its partitions hold, by partitionInfo)."""
    pointer = job["result"]
    manifest = json.loads(s3.get_object(Bucket=pointer["bucket"], Key=pointer["manifest_key"])["Body"].read())
    objects = manifest["objects"]
    problems = []
    if manifest["row_count"] != result.rows or pointer["row_count"] != result.rows:
        problems.append(f"row_count {manifest['row_count']} where the result has {result.rows:,} rows")
    if sum(entry["rows"] for entry in objects) != result.rows:
        problems.append(f"the parts hold {sum(entry['rows'] for entry in objects):,} rows")
    if sum(entry["bytes"] for entry in objects) != pointer["byte_count"]:
        problems.append("the parts' bytes are not the byte_count")
    names = [_PART_NAME.search(entry["key"].rsplit("/", 1)[-1]) for entry in objects]
    if any(name is None for name in names):
        return "; ".join([*problems, "a part is not named part-..."])
    numbers = [(int(name.group(1)), int(name.group(2) or -1)) for name in names if name is not None]
    if plan is None:
        if [number for number, _ in numbers] != list(range(len(objects))):
            problems.append("the parts are not part-00000, part-00001 ... in order")
    else:
        branches = [branch for branch, _ in numbers]
        expected = [(branch, part) for branch in range(len(plan)) for part in range(branches.count(branch))]
        if numbers != expected or sorted(set(branches)) != list(range(len(plan))):
            problems.append("the parts are not part-00000-00000 ... in branch and part order")
        for branch in plan:
            rows = sum(
                entry["rows"]
                for entry, (number, _) in zip(objects, numbers, strict=True)
                if number == branch["index"]
            )
            if rows != result.rows_of(branch["first"], branch["end"]):
                problems.append(f"branch {branch['index']} landed {rows:,} rows")
    return "; ".join(problems)


# --- the fetches -----------------------------------------------------------------------------------


@dataclass
class ParallelRun:
    row: Row
    max_parallel: int
    branches: int
    split_seconds: float
    branches_seconds: float
    manifest_seconds: float
    branch_seconds: list[float] = field(default_factory=list)
    branch_cpu_seconds: list[float] = field(default_factory=list)
    branch_json_bytes: list[int] = field(default_factory=list)

    @property
    def mb_per_cpu_second(self) -> float:
        """What one branch lands per second of its own CPU (every thread), over all branches."""
        return _mb_per_s(sum(self.branch_json_bytes), sum(self.branch_cpu_seconds))

    @property
    def branch_mb_per_s(self) -> float:
        """The median branch's rate while it ran (sharing the cores)."""
        return statistics.median(
            _mb_per_s(size, seconds)
            for size, seconds in zip(self.branch_json_bytes, self.branch_seconds, strict=True)
        )


def one_fetch(
    s3_url: str, environment: dict[str, str], rendered: Rendered, output_format: str, compression: str
) -> tuple[Row, float]:
    """One Fetch reads the whole result (max_parallel_fetch 1); with its MB per CPU second."""
    connection = _connection_name(1)
    warm_up = fetch_event(connection, rendered.warm_up.handle, output_format, compression, "warm-up-one")
    event = fetch_event(
        connection, rendered.result.handle, output_format, compression, f"one-{output_format}"
    )
    label = f"one Fetch, {_format(output_format, compression)} (max_parallel_fetch 1)"
    with (
        warm_workers(environment, warm_up, 1) as (pool, (pid,)),
        _measured(label, rendered.result.json_bytes, {"Fetch": pid, **SERVER_PIDS}) as row,
    ):
        done = pool.submit(_step, event).result()
    s3 = _client("s3", s3_url)
    job = done["job"]
    if job["status"] != "DONE":
        raise RuntimeError(f"one Fetch returned the job {job['status']}, not DONE")
    problems = check_manifest(s3, job, rendered.result, None)
    parts = f"{len(_manifest_objects(s3, job))} part(s)"
    row.note = f"{parts}; manifest {'ok' if not problems else 'WRONG: ' + problems}"
    _empty_bucket(s3)
    if problems:
        raise ManifestError(problems)
    return row, _mb_per_s(rendered.result.json_bytes, done["cpu_seconds"])


class ManifestError(RuntimeError):
    pass


def _manifest_objects(s3: Any, job: dict[str, Any]) -> list[Any]:
    pointer = job["result"]
    objects: list[Any] = json.loads(
        s3.get_object(Bucket=pointer["bucket"], Key=pointer["manifest_key"])["Body"].read()
    )["objects"]
    return objects


def parallel_fetch(
    s3_url: str,
    environment: dict[str, str],
    rendered: Rendered,
    output_format: str,
    compression: str,
    max_parallel: int,
) -> ParallelRun:
    """The first Fetch (SPLIT), the branches at most ``max_parallel`` at a time, the manifest."""
    connection = _connection_name(max_parallel)
    name = f"parallel-x{max_parallel}-{output_format}-{compression}"
    first = fetch_event(connection, rendered.result.handle, output_format, compression, name)
    warm_up_a = fetch_event(
        connection, rendered.warm_up.handle, output_format, compression, f"warm-up-{name}"
    )
    warm_up_branch = branch_warm_up(connection, rendered.warm_up, output_format, compression)
    label = f"parallel x{max_parallel}, {_format(output_format, compression)}"
    with (
        warm_workers(environment, warm_up_a, 1) as (process_a, (pid_a,)),
        warm_workers(environment, warm_up_branch, max_parallel) as (branch_pool, branch_pids),
    ):
        pids = {"A": pid_a, **{f"b{n}": pid for n, pid in enumerate(branch_pids)}, **SERVER_PIDS}
        with _measured(label, rendered.result.json_bytes, pids) as row:
            split = process_a.submit(_step, first).result()
            split_done = time.perf_counter()
            job = split["job"]
            if job["status"] != "SPLIT":
                raise RuntimeError(f"the first Fetch returned the job {job['status']}, not SPLIT")
            branches = job["fetch_plan"]["branches"]
            futures = [
                branch_pool.submit(_step, {**first, "job": job, "branch": branch}) for branch in branches
            ]
            landed = [future.result() for future in futures]
            branches_done = time.perf_counter()
            done = process_a.submit(_step, {**first, "job": job}).result()
    s3 = _client("s3", s3_url)
    if done["job"]["status"] != "DONE":
        raise RuntimeError(f"the manifest call returned the job {done['job']['status']}, not DONE")
    problems = check_manifest(s3, done["job"], rendered.result, branches)
    planned = job["fetch_plan"]["max_parallel"]
    objects = _manifest_objects(s3, done["job"])
    _empty_bucket(s3)
    cpu = row.cpu
    row.cpu = {
        "A": cpu.pop("A"),
        "branches": sum(cpu.pop(f"b{n}") for n in range(len(branch_pids))),
        **cpu,
    }
    run = ParallelRun(
        row=row,
        max_parallel=max_parallel,
        branches=len(branches),
        split_seconds=split["seconds"],
        branches_seconds=branches_done - split_done,
        manifest_seconds=done["seconds"],
        branch_seconds=[branch["seconds"] for branch in landed],
        branch_cpu_seconds=[branch["cpu_seconds"] for branch in landed],
        branch_json_bytes=[
            rendered.result.json_bytes_of(branch["first"], branch["end"]) for branch in branches
        ],
    )
    row.note = (
        f"{len(branches)} branches (plan max_parallel {planned}), {len(objects)} parts; "
        f"manifest {'ok' if not problems else 'WRONG: ' + problems}"
    )
    if problems:
        raise ManifestError(problems)
    return run


def _format(output_format: str, compression: str) -> str:
    return output_format if compression == "none" else f"{output_format}.{compression}"


# --- the report -----------------------------------------------------------------------------------


def _print_row(row: Row, one: Row | None) -> None:
    speedup = f"{row.mb_per_s / one.mb_per_s:5.2f}x" if one is not None else "     -"
    print(
        f"  {row.label:<46} {row.seconds:7.2f} {row.mb_per_s:8.1f} {speedup:>10}   {row.cores()}"
        + (f"\n  {'':<46} {row.note}" if row.note else ""),
        flush=True,
    )


def _print_parallel_detail(run: ParallelRun, one: Row) -> None:
    fetch_cpu = run.row.cpu["A"] + run.row.cpu["branches"]
    print(
        f"  {'':<46} split {run.split_seconds:.2f} s, branches {run.branches_seconds:.2f} s, "
        f"manifest {run.manifest_seconds:.2f} s; a branch: {run.branch_mb_per_s:.1f} MB/s while "
        f"sharing the cores (median), {run.mb_per_cpu_second:.1f} MB per CPU second of its process; "
        f"Fetch CPU in all {fetch_cpu:.2f} s (one Fetch: {one.cpu['Fetch']:.2f} s)",
        flush=True,
    )


def _makespan(durations: list[float], slots: int) -> float:
    """When the last of ``durations`` ends, each started in order in the first free of ``slots``
    (as the Map starts its items, at most MaxConcurrency at a time)."""
    free = [0.0] * slots
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def _extrapolate(
    run: ParallelRun, one_row: Row, one_mb_per_cpu_second: float, wire_mb_per_s: float, sink_mb_per_s: float
) -> str:
    """What the measured per-branch MB per CPU second implies when each branch has a vCPU of its own."""
    total_mb = run.row.json_bytes / MB
    per_branch = run.mb_per_cpu_second
    durations = [size / MB / per_branch for size in run.branch_json_bytes]
    cpu_bound = _makespan(durations, run.max_parallel)
    bound = min(wire_mb_per_s, sink_mb_per_s)
    branches_seconds = max(cpu_bound, total_mb / bound)
    seconds = run.split_seconds + branches_seconds + run.manifest_seconds
    one_seconds = max(total_mb / one_mb_per_cpu_second, total_mb / bound)
    limit = "the branches' CPU" if cpu_bound >= total_mb / bound else "the wire / sink measured here"
    return (
        f"  {run.row.label}: {run.branches} branches, {run.max_parallel} at a time, each at "
        f"{per_branch:.1f} MB/s (its MB per CPU second) -> branches {branches_seconds:.2f} s (bound by "
        f"{limit}) + split {run.split_seconds:.2f} s + manifest {run.manifest_seconds:.2f} s = "
        f"{seconds:.2f} s: {total_mb / seconds:.1f} MB/s, {one_seconds / seconds:.2f}x one Fetch with a "
        f"vCPU ({one_mb_per_cpu_second:.1f} MB per CPU second -> {total_mb / one_seconds:.1f} MB/s; "
        f"measured here, sharing the cores: {one_row.mb_per_s:.1f} MB/s)"
    )


def _pair(text: str) -> tuple[str, str]:
    output_format, _, compression = text.partition("/")
    return output_format, compression or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 2)[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mb", type=int, default=200, help="the result's size in MB of upstream JSON (200)")
    parser.add_argument("--partitions", type=int, default=40, help="Snowflake partitions of the result (40)")
    parser.add_argument("--branches", type=int, default=8, help="branches of the parallel fetch's plan (8)")
    parser.add_argument("--max-parallel", default="2,4", help="branches at a time, one run each (2,4)")
    parser.add_argument(
        "--formats", default="jsonl/none", help="comma-separated format/compression pairs (jsonl/none)"
    )
    parser.add_argument("--part-mb", type=int, default=128, help="PART_MAX_BYTES in MiB (128, the default)")
    parser.add_argument(
        "--wire-threads",
        type=int,
        help="downloads / uploads at once in the baselines (the largest --max-parallel)",
    )
    args = parser.parse_args(argv)
    if shutil.which("moto_server", path=str(_BIN)) is None:
        print("moto_server is not installed in this environment (moto[server])", file=sys.stderr)
        return 2
    levels = [int(level) for level in args.max_parallel.split(",")]
    formats = [_pair(item) for item in args.formats.split(",")]
    threads = args.wire_threads or max(levels)
    if args.partitions < args.branches or args.branches < 2 or min(levels) < 2:
        parser.error("need --partitions >= --branches >= 2 and every --max-parallel >= 2")
    cores = len(os.sched_getaffinity(0))
    started = time.perf_counter()
    with moto_s3() as s3_url, tempfile.TemporaryDirectory(prefix="bench-parallel-fetch-") as workdir:
        _client("s3", s3_url).create_bucket(Bucket=BUCKET)
        rendered = render(Path(workdir), args.mb, args.partitions)
        result = rendered.result
        environment = _fetch_environment(s3_url, args.part_mb) | {
            # as many bytes a branch as make --branches branches of the planned (partitionInfo) bytes
            "FETCH_BRANCH_MIN_BYTES": str(result.planned_bytes // args.branches),
        }
        print(
            f"parallel_fetch: a Snowflake result of {result.json_bytes / MB:.1f} MB of JSON (uncompressed), "
            f"{result.rows:,} rows in {len(result.pages)} partitions ({result.wire_bytes / MB:.1f} MB on the "
            f"wire: partitions 1.. gzipped), rendered by the emulator in {rendered.render_seconds:.1f} s and "
            f"served from memory by the fast source; parts of {args.part_mb} MiB; FETCH_BRANCH_MIN_BYTES "
            f"{result.planned_bytes // args.branches:,} (partitionInfo: {result.planned_bytes / MB:.1f} MB); "
            f"{cores} cores. Fetch runs in warm worker processes (spawned, warmed up with a small fetch, "
            f"then reused): process A makes a parallel fetch's first and last calls, a pool of k "
            f"workers its branches. MB/s: of the upstream JSON, over the wall time.",
            flush=True,
        )
        print(
            f"  {'':<46} {'wall s':>7} {'MB/s':>8} {'x 1 Fetch':>10}   cores used (CPU s per wall s)",
            flush=True,
        )
        with fast_source(Path(workdir), [result, rendered.warm_up]) as source_url:
            for level in {1, *levels}:
                save_connection(s3_url, _connection_name(level), source_url, level)
            baselines = [wire(source_url, result, 1), wire(source_url, result, threads)]
            baselines += [sink(s3_url, rendered.json_path, 1), sink(s3_url, rendered.json_path, threads)]
            for row in baselines:
                _print_row(row, None)
            wire_best = max(row.mb_per_s for row in baselines[:2])
            sink_best = max(row.mb_per_s for row in baselines[2:])
            extrapolations: list[str] = []
            for output_format, compression in formats:
                one, one_per_cpu = one_fetch(s3_url, environment, rendered, output_format, compression)
                _print_row(one, None)
                for level in levels:
                    run = parallel_fetch(s3_url, environment, rendered, output_format, compression, level)
                    _print_row(run.row, one)
                    _print_parallel_detail(run, one)
                    extrapolations.append(_extrapolate(run, one, one_per_cpu, wire_best, sink_best))
    print(
        f"\nThis machine has {cores} cores: every Fetch process, moto's S3 and the source share them, so "
        f"a speedup measured here is bounded by the cores, not by the method (see 'cores used').",
        flush=True,
    )
    print(
        f"EXTRAPOLATION, not a measurement: each branch with a vCPU of its own (as on Lambda), at the MB "
        f"per CPU second measured for the branches here, bounded by the best wire ({wire_best:.1f} MB/s) and "
        f"S3 sink ({sink_best:.1f} MB/s) measured here; split and manifest as measured here (Lambda's "
        f"per-invocation and Map overheads and real S3's latency not included):",
        flush=True,
    )
    for line in extrapolations:
        print(line, flush=True)
    print(f"(the run took {time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ManifestError as error:
        print(f"MANIFEST CHECK FAILED: {error}", file=sys.stderr)
        sys.exit(1)
