"""What Fetch costs in memory and time: large ES|QL results streamed into (emulated) S3.

    .venv/bin/python -m bench.fetch [--sizes 50,1000] [--full] [--formats jsonl/none,...] [--part-mb 128]
                                    [--profile]

Processes: moto's S3 (``moto_server``), the ES|QL emulator (``query-relay emulate esql``), a fast
upstream (below) and, for every measurement, a fresh child that runs ``query_relay.workflow.fetch``
exactly as the Fetch Lambda does (connection from the emulated Secrets Manager, parts into the
emulated S3). The child is a warm Lambda: it first fetches a small result (100 rows from the
emulator, same format), which creates the boto3 clients and imports what Fetch imports on first
use, as an earlier invocation of the container would have; a cold start's own cost is
bench/cold_start.py's. It reports its peak RSS growth (VmHWM after the measured fetch minus VmHWM
after the warm-up one).

Results come from ``FROM synthetic_<N> | LIMIT <N>`` with N sized to the wanted MB of upstream JSON.
Every rate is upstream JSON MB per second; for Fetch it includes conversion (csv, jsonl), gzip and
the S3 upload. Each result is fetched from two sources:

- the fast source (what the goals are judged on): the emulator's answer for the finished task,
  rendered once per size, then served from memory by a minimal threaded HTTP server in its own
  process (``GET /_query/async/<id>`` answers those bytes, ``DELETE`` acknowledges). Its baseline
  is min(raw download, S3 sink): a plain httpx streaming download of the answer (bytes discarded)
  and the same bytes uploaded to the emulated S3 as Fetch uploads a part (boto3's managed transfer
  with Fetch's TransferConfig, from a stream that cannot seek);
- the emulator itself, which renders JSON as it answers (~15-30 MB/s): Fetch's rate from it next to
  a raw download of the same answer, in the same run (a second column, for comparison, at the
  smallest size only unless ``--full``: at 1 GB it would take minutes per row).

What bounds a row: each row says how many cores each process used during the fetch (CPU seconds
per second: Fetch's process, every thread; moto's S3; the source), read from /proc. On a 2-core
machine, Fetch near 1.0 with the servers' share filling the rest is a CPU-bound fetch; ``--profile``
prints the functions Fetch spent its own time in (cProfile, which slows it: not for the goals).

Goals, per row: Fetch from the fast source at >= 0.5x the baseline for jsonl and csv, >= 0.8x for
native; peak RSS growth < 100 MB whatever the source. Rows that miss them say MISSES GOAL (and the
exit status is 1): the goals are what Fetch should reach, not what it reaches today.

By default the smallest size runs every format x compression and the larger ones a representative
subset (jsonl, csv+gzip, native); ``--full`` runs every combination at every size, ``--formats``
exactly the pairs given. Peak RSS is judged at both default sizes, 50 MB and 1 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import boto3
import httpx

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

BYTES_PER_ROW = 110  # JSON bytes per synthetic row in an ES|QL answer (measured)
MB = 1_000_000
MIB = 1024 * 1024
BUCKET = "bench-results"
CONNECTION = "bench-esql"  # the ES|QL emulator
FAST_CONNECTION = "bench-esql-fast"  # the fast source serving a rendered answer from memory
SECRET_PREFIX = "query-relay/connections/"
SINK_KEY = "bench/sink.json"
WARM_UP_ROWS = 100  # the small result each child fetches first (a warm container)
RSS_GOAL_MB = 100
THROUGHPUT_GOALS = {"jsonl": 0.5, "csv": 0.5, "native": 0.8, "parquet": 0.5}  # x min(raw download, S3 sink)
ALL_FORMATS = [(f, c) for f in ("jsonl", "csv", "native") for c in ("none", "gzip")] + [
    ("parquet", "snappy"),
    ("parquet", "zstd"),
]
LARGE_SUBSET = [("jsonl", "none"), ("csv", "gzip"), ("native", "none"), ("parquet", "snappy")]
ASYNC_PATH = "/_query/async/"
WRITE_SLICE = 4 * MIB  # the fast source writes its answer this many bytes at a time
_BIN = Path(sys.executable).parent
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
_REGION = "us-east-1"
PROFILE_LINES = 18  # functions shown per profiled fetch (--profile), by own time
# The processes sharing the machine with Fetch, by name (set while each runs): their CPU seconds
# during a fetch say what bounds it.
SERVER_PIDS: dict[str, int] = {}


# --- the other processes ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    port = _free_port()
    with subprocess.Popen(
        [str(_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        SERVER_PIDS["moto"] = server.pid
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_up(url)
            yield url
        finally:
            SERVER_PIDS.pop("moto", None)
            server.terminate()
            server.wait(timeout=10)


@contextlib.contextmanager
def esql_emulator() -> Iterator[str]:
    with subprocess.Popen(
        [str(_BIN / "query-relay"), "emulate", "esql", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as emulator:
        try:
            assert emulator.stdout is not None
            match = re.search(r"(http://\S+)", emulator.stdout.readline())
            if match is None:
                raise RuntimeError("the ES|QL emulator did not say where it listens")
            url = match.group(1)
            _wait_until_up(url)
            SERVER_PIDS["emulator"] = emulator.pid
            yield url
        finally:
            SERVER_PIDS.pop("emulator", None)
            emulator.terminate()
            emulator.wait(timeout=10)


class _AnswerHandler(BaseHTTPRequestHandler):
    """Every task is the finished one whose answer the server holds; DELETE acknowledges."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Fetch's client expects
    answer = memoryview(b"")  # set in the server's process, before it listens

    def do_GET(self) -> None:
        task_id = self._task_id()
        if task_id is None:
            self._reply(404, memoryview(b""))
        else:
            self._reply(200, self.answer, task_id)

    def do_DELETE(self) -> None:
        found = self._task_id() is not None
        self._reply(200 if found else 404, memoryview(b'{"acknowledged":true}' if found else b""))

    def _task_id(self) -> str | None:
        path = urlsplit(self.path).path
        if not path.startswith(ASYNC_PATH) or path == ASYNC_PATH:
            return None
        return unquote(path.removeprefix(ASYNC_PATH))

    def _reply(self, status: int, body: memoryview, task_id: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Elastic-Product", "Elasticsearch")
        if task_id is not None:  # what ES says of a finished async task, as the emulator does
            self.send_header("X-Elasticsearch-Async-Id", task_id)
            self.send_header("X-Elasticsearch-Async-Is-Running", "?0")
        self.end_headers()
        for start in range(0, len(body), WRITE_SLICE):
            self.wfile.write(body[start : start + WRITE_SLICE])

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request on stderr would interleave with the report."""


def serve_answer(answer_path: str, port: int) -> None:
    """Runs in its own process: load the answer into memory, then serve it until terminated."""
    _AnswerHandler.answer = memoryview(Path(answer_path).read_bytes())
    with ThreadingHTTPServer(("127.0.0.1", port), _AnswerHandler) as server:
        server.serve_forever()


@contextlib.contextmanager
def serving_process(serve: Callable[[str, int], None], path: Path, name: str) -> Iterator[str]:
    """``serve(path, port)`` in a process of its own (its CPU counted as ``name``); its base URL
    once it listens (which it does only once its answers are in memory)."""
    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(str(path), port), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url)
        if server.pid is not None:
            SERVER_PIDS[name] = server.pid
        yield url
    finally:
        SERVER_PIDS.pop(name, None)
        server.terminate()
        server.join(timeout=10)


def fast_upstream(answer_path: Path) -> contextlib.AbstractContextManager[str]:
    return serving_process(serve_answer, answer_path, "fast source")


# --- upstream tasks and the baselines --------------------------------------------------------------


def start_task(esql_url: str, rows: int) -> str:
    """An async task holding the synthetic result (the emulator re-runs it on every read)."""
    httpx.post(f"{esql_url}/_emulator/config", json={"query_seconds": 0.2}).raise_for_status()
    response = httpx.post(
        f"{esql_url}/_query/async",
        json={
            "query": f"FROM synthetic_{rows} | LIMIT {rows}",
            "wait_for_completion_timeout": "0ms",
            "keep_alive": "1h",
        },
    )
    response.raise_for_status()
    task_id: str = response.json()["id"]
    httpx.get(
        f"{esql_url}/_query/async/{task_id}", params={"wait_for_completion_timeout": "10s"}
    ).raise_for_status()
    return task_id


def _answer_chunks(base_url: str, task_id: str) -> Iterator[bytes]:
    """The finished task's answer as it comes off the wire, a MiB at a time."""
    with httpx.stream("GET", f"{base_url}{ASYNC_PATH}{task_id}", timeout=600) as response:
        response.raise_for_status()
        yield from response.iter_raw(MIB)


def raw_download(base_url: str, task_id: str) -> tuple[int, float]:
    """(bytes, seconds) of a plain streaming GET of the finished task's answer."""
    started = time.perf_counter()
    size = sum(len(chunk) for chunk in _answer_chunks(base_url, task_id))
    return size, time.perf_counter() - started


def render_answer(esql_url: str, task_id: str, answer_path: Path) -> int:
    """Keep the emulator's answer in a file (the fast source loads it); returns its size."""
    with answer_path.open("wb") as answer:
        for chunk in _answer_chunks(esql_url, task_id):
            answer.write(chunk)
    return answer_path.stat().st_size


class _OneWayReader(io.RawIOBase):
    """A file read front to back only, like Fetch's part streams: s3transfer then takes the path it
    takes for Fetch (each multipart chunk read into memory) rather than the one for seekable files."""

    def __init__(self, file: io.FileIO) -> None:
        super().__init__()
        self._file = file

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        return self._file.readinto(buffer)


def sink_upload(s3_url: str, answer_path: Path) -> float:
    """Seconds to upload the answer's bytes to S3 as Fetch uploads a part (query_relay.results)."""
    # Imported here: Fetch's children import this module, and must import query_relay only once
    # run_fetch_in_child has set the environment Powertools reads as it is first imported.
    from query_relay.results import upload_config  # noqa: PLC0415

    config = upload_config()
    s3 = _client("s3", s3_url)
    with answer_path.open("rb", buffering=0) as file, io.BufferedReader(_OneWayReader(file)) as body:
        started = time.perf_counter()
        s3.upload_fileobj(body, BUCKET, SINK_KEY, Config=config)
        seconds = time.perf_counter() - started
    _empty_bucket(s3)
    return seconds


def _mb_per_s(byte_count: int, seconds: float) -> float:
    return byte_count / MB / seconds


@dataclass(frozen=True)
class FastBaseline:
    """What the fast source and the S3 sink manage with nothing in between, for one size."""

    json_bytes: int
    raw_mb_per_s: float
    sink_mb_per_s: float

    @property
    def mb_per_s(self) -> float:
        return min(self.raw_mb_per_s, self.sink_mb_per_s)


def fast_baseline(s3_url: str, fast_url: str, task_id: str, answer_path: Path) -> FastBaseline:
    raw_bytes, raw_seconds = raw_download(fast_url, task_id)
    return FastBaseline(
        json_bytes=raw_bytes,
        raw_mb_per_s=_mb_per_s(raw_bytes, raw_seconds),
        sink_mb_per_s=_mb_per_s(answer_path.stat().st_size, sink_upload(s3_url, answer_path)),
    )


# --- the child that runs Fetch ---------------------------------------------------------------------


def _vm_hwm_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    """Start the high-water mark from the current RSS (Linux >= 4.0), so import-time peaks don't count."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # Fields 14 and 15 of proc(5) (utime, stime); the split starts at field 3 (state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_fetch_in_child(
    environment: dict[str, str],
    warm_up: dict[str, Any],
    event: dict[str, Any],
    profile: bool,
    servers: dict[str, int],
) -> dict[str, Any]:
    """Runs in a fresh process: import what the Fetch Lambda imports, fetch a small result (a warm
    container), then fetch ``event`` and measure, with the CPU the ``servers`` (name: pid) used
    meanwhile (with ``profile``, under cProfile: its own time per function, which slows the fetch)."""
    os.environ.update(environment)
    from query_relay import workflow  # noqa: PLC0415 - the child's own imports are part of the setup

    workflow.fetch(warm_up)
    _reset_peak()
    before = _vm_hwm_kb()
    profiler = cProfile.Profile() if profile else None
    servers_before = {name: _cpu_seconds(pid) for name, pid in servers.items()}
    cpu_started, started = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = workflow.fetch(event)
    if profiler is not None:
        profiler.disable()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    servers_cpu = {name: _cpu_seconds(pid) - servers_before[name] for name, pid in servers.items()}
    report = ""
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(PROFILE_LINES)
        report = text.getvalue()
    return {
        "rss_growth_mb": (_vm_hwm_kb() - before) * 1024 / MB,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "servers_cpu": servers_cpu,
        "profile": report,
        "stored_bytes": float(result["result"]["byte_count"]),
        "rows": float(result["result"]["row_count"]),
        "parts": float(len(_manifest_objects(result))),
    }


def _manifest_objects(result: dict[str, Any]) -> list[Any]:
    import boto3 as child_boto3  # noqa: PLC0415

    pointer = result["result"]
    manifest = child_boto3.client("s3").get_object(Bucket=pointer["bucket"], Key=pointer["manifest_key"])
    objects: list[Any] = json.loads(manifest["Body"].read())["objects"]
    return objects


@dataclass(frozen=True)
class FetchRun:
    json_bytes: int  # of the upstream answer Fetch read
    seconds: float
    rss_growth_mb: float
    stored_mb: float
    parts: int
    rows: int
    cpu_seconds: float  # of Fetch's process (every thread) during the fetch
    servers_cpu: dict[str, float]  # CPU seconds of each other process during the fetch
    profile: str  # cProfile's report, with --profile

    @property
    def mb_per_s(self) -> float:
        return _mb_per_s(self.json_bytes, self.seconds)

    def cores(self) -> str:
        """The CPU each process used during the fetch, in cores (CPU seconds per second)."""
        used = {"Fetch": self.cpu_seconds, **self.servers_cpu}
        return ", ".join(f"{name} {cpu / self.seconds:.2f}" for name, cpu in used.items())

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def fetch_event(
    connection: str, task_id: str, output_format: str, compression: str, job_id: str
) -> dict[str, Any]:
    submitted = datetime.now(UTC)
    return {
        "spec": {
            "connection": connection,
            "query": {"query": "FROM synthetic_1"},
            "output": {"format": output_format, "compression": compression, "prefix": "bench/"},
        },
        "job": {
            "job_id": job_id,
            "connection": connection,
            "provider": "esql",
            "upstream_id": task_id,
            "status": "FINISHED",
            "submitted_at": submitted.isoformat(),
            "deadline": (submitted + timedelta(hours=1)).isoformat(),
        },
    }


def warm_up_event(esql_url: str, output_format: str, compression: str, job_id: str) -> dict[str, Any]:
    """A small result of the emulator's to fetch first (each fetch releases its task: one each)."""
    task_id = start_task(esql_url, WARM_UP_ROWS)
    return fetch_event(CONNECTION, task_id, output_format, compression, f"{job_id}-warm-up")


def run_fetch(
    s3_url: str,
    environment: dict[str, str],
    warm_up: dict[str, Any],
    event: dict[str, Any],
    json_bytes: int,
    *,
    profile: bool = False,
) -> FetchRun:
    """Fetch in a fresh child (warmed up by ``warm_up``), then empty the bucket for the next one."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        figures = child.submit(
            run_fetch_in_child, environment, warm_up, event, profile, dict(SERVER_PIDS)
        ).result()
    _empty_bucket(_client("s3", s3_url))
    return FetchRun(
        json_bytes=json_bytes,
        seconds=figures["seconds"],
        rss_growth_mb=figures["rss_growth_mb"],
        stored_mb=figures["stored_bytes"] / MB,
        parts=int(figures["parts"]),
        rows=int(figures["rows"]),
        cpu_seconds=figures["cpu_seconds"],
        servers_cpu=figures["servers_cpu"],
        profile=figures["profile"],
    )


# --- measurements ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    size_mb: int
    output_format: str
    compression: str
    baseline: FastBaseline
    fast: FetchRun  # from the fast source: what the goals judge
    emulator: FetchRun | None  # from the emulator, the second column (at the smallest size)
    emulator_raw_mb_per_s: float | None

    @property
    def ratio(self) -> float:
        return self.fast.mb_per_s / self.baseline.mb_per_s

    @property
    def throughput_goal(self) -> float:
        return THROUGHPUT_GOALS[self.output_format]

    @property
    def rss_growth_mb(self) -> float:
        runs = [self.fast] if self.emulator is None else [self.fast, self.emulator]
        return max(run.rss_growth_mb for run in runs)

    @property
    def meets_goals(self) -> bool:
        return self.rss_growth_mb < RSS_GOAL_MB and self.ratio >= self.throughput_goal


def _fetch_environment(s3_url: str, part_mb: int) -> dict[str, str]:
    return {
        **_CREDENTIALS,
        "AWS_DEFAULT_REGION": _REGION,
        "AWS_ENDPOINT_URL": s3_url,
        "RESULTS_BUCKET": BUCKET,
        "CONNECTION_SECRET_PREFIX": SECRET_PREFIX,
        "PART_MAX_BYTES": str(part_mb * MIB),
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_NAMESPACE": "QueryRelayBench",
        "POWERTOOLS_SERVICE_NAME": "query-relay-bench",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def measure(
    s3_url: str,
    esql_url: str,
    workdir: Path,
    size_mb: int,
    formats: list[tuple[str, str]],
    part_mb: int,
    *,
    emulator_column: bool,
    profile: bool,
) -> list[Measurement]:
    rows = size_mb * MB // BYTES_PER_ROW
    environment = _fetch_environment(s3_url, part_mb)
    answer_path = workdir / f"answer-{size_mb}.json"
    fast_task = start_task(esql_url, rows)
    render_answer(esql_url, fast_task, answer_path)
    results: list[Measurement] = []
    with fast_upstream(answer_path) as fast_url:
        save_connection(s3_url, FAST_CONNECTION, fast_url)
        baseline = fast_baseline(s3_url, fast_url, fast_task, answer_path)
        print(_size_header(size_mb, rows, baseline), flush=True)
        for output_format, compression in formats:
            job = f"bench-{size_mb}-{output_format}-{compression}"
            fast_event = fetch_event(FAST_CONNECTION, fast_task, output_format, compression, f"{job}-fast")
            warm_up = warm_up_event(esql_url, output_format, compression, f"{job}-fast")
            fast = run_fetch(s3_url, environment, warm_up, fast_event, baseline.json_bytes, profile=profile)
            emulator, emulator_raw = None, None
            if emulator_column:  # its own task and raw download, right before its fetch
                task_id = start_task(esql_url, rows)
                raw_bytes, raw_seconds = raw_download(esql_url, task_id)
                event = fetch_event(CONNECTION, task_id, output_format, compression, f"{job}-emulator")
                emulator_warm_up = warm_up_event(esql_url, output_format, compression, f"{job}-emulator")
                emulator = run_fetch(s3_url, environment, emulator_warm_up, event, raw_bytes)
                emulator_raw = _mb_per_s(raw_bytes, raw_seconds)
            measurement = Measurement(
                size_mb=size_mb,
                output_format=output_format,
                compression=compression,
                baseline=baseline,
                fast=fast,
                emulator=emulator,
                emulator_raw_mb_per_s=emulator_raw,
            )
            print(_row(measurement), flush=True)
            if fast.profile:
                print(fast.profile, flush=True)
            results.append(measurement)
    answer_path.unlink()
    return results


def _client(service: str, endpoint_url: str) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint_url,
        region_name=_REGION,
        aws_access_key_id=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def _empty_bucket(s3: Any) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])


def _size_header(size_mb: int, rows: int, baseline: FastBaseline) -> str:
    return (
        f"  {size_mb} MB: {baseline.json_bytes / MB:.1f} MB of JSON, {rows:,} rows; fast source: "
        f"raw download {baseline.raw_mb_per_s:.1f} MB/s, S3 sink {baseline.sink_mb_per_s:.1f} MB/s, "
        f"baseline (the lower) {baseline.mb_per_s:.1f} MB/s"
    )


def _row(m: Measurement) -> str:
    verdict = "ok" if m.meets_goals else "MISSES GOAL"
    fast, emulator = m.fast, m.emulator
    column = ""
    if emulator is not None:
        column = (
            f"emulator: fetch {emulator.mb_per_s:5.1f} MB/s  raw {m.emulator_raw_mb_per_s or 0:5.1f} MB/s  "
            f"peak RSS +{emulator.rss_growth_mb:5.1f} MB  |  "
        )
    return (
        f"    {m.output_format:>6} {m.compression:>4}  fast: fetch {fast.mb_per_s:6.1f} MB/s "
        f"{fast.rows_per_s:>9,.0f} rows/s  ratio {m.ratio:4.2f} (goal {m.throughput_goal:.1f})  "
        f"peak RSS +{fast.rss_growth_mb:5.1f} MB  cores used: {fast.cores()}  |  {column}"
        f"stored {fast.stored_mb:6.1f} MB in {fast.parts} part(s), {fast.rows:,} rows  {verdict}"
    )


def save_connection(s3_url: str, name: str, base_url: str) -> None:
    """Store (or repoint) the connection ``name`` at ``base_url``."""
    secrets = _client("secretsmanager", s3_url)
    document = {"provider": "esql", "base_url": base_url, "auth": {"type": "api_key", "api_key": "bench"}}
    try:
        secrets.create_secret(Name=SECRET_PREFIX + name, SecretString=json.dumps(document))
    except secrets.exceptions.ResourceExistsException:
        secrets.put_secret_value(SecretId=SECRET_PREFIX + name, SecretString=json.dumps(document))


def setup(s3_url: str, esql_url: str) -> None:
    _client("s3", s3_url).create_bucket(Bucket=BUCKET)
    save_connection(s3_url, CONNECTION, esql_url)


def _pair(text: str) -> tuple[str, str]:
    output_format, _, compression = text.partition("/")
    return output_format, compression or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,1000", help="result sizes in MB of upstream JSON (50,1000)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="every format x compression, and the emulator column, at every size",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run each fast-source fetch under cProfile and print its busiest functions (slower)",
    )
    parser.add_argument(
        "--formats",
        help="comma-separated format/compression pairs, e.g. jsonl/none,csv/gzip (default: see above)",
    )
    parser.add_argument("--part-mb", type=int, default=128, help="PART_MAX_BYTES in MiB (128, the default)")
    args = parser.parse_args(argv)
    if shutil.which("moto_server", path=str(_BIN)) is None:
        print("moto_server is not installed in this environment (moto[server])", file=sys.stderr)
        return 2
    sizes = [int(size) for size in args.sizes.split(",")]
    goals = ", ".join(f"{name} >= {goal}x" for name, goal in THROUGHPUT_GOALS.items())
    print(
        f"fetch: moto S3, the ES|QL emulator and a fast source (the emulator's answer served from memory) "
        f"in their own processes, Fetch in a fresh child each time; parts of {args.part_mb} MiB; "
        f"goals: Fetch from the fast source at {goals} min(raw download, S3 sink), "
        f"peak RSS growth < {RSS_GOAL_MB} MB",
        flush=True,
    )
    measurements: list[Measurement] = []
    with (
        moto_s3() as s3_url,
        esql_emulator() as esql_url,
        tempfile.TemporaryDirectory(prefix="bench-fetch-") as workdir,
    ):
        setup(s3_url, esql_url)
        for size in sizes:
            formats = ALL_FORMATS if args.full or size == min(sizes) else LARGE_SUBSET
            if args.formats:
                formats = [_pair(item) for item in args.formats.split(",")]
            measurements += measure(
                s3_url,
                esql_url,
                Path(workdir),
                size,
                formats,
                args.part_mb,
                emulator_column=args.full or size == min(sizes),
                profile=args.profile,
            )
    missed = [m for m in measurements if not m.meets_goals]
    print(f"{len(measurements) - len(missed)}/{len(measurements)} measurements meet the goals", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
