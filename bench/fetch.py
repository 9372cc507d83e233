"""What Fetch costs in memory and time: large ES|QL results streamed into (emulated) S3.

    .venv/bin/python -m bench.fetch [--sizes 50,500] [--full] [--part-mb 128]

Three processes: moto's S3 (``moto_server``), the ES|QL emulator (``query-relay emulate esql``) and,
for every measurement, a fresh child that runs ``query_relay.workflow.fetch`` exactly as the Fetch
Lambda does (connection from the emulated Secrets Manager, parts into the emulated S3). The child
reports its peak RSS growth (VmHWM after the fetch minus VmHWM once its modules are imported).

Results come from ``FROM synthetic_<N> | LIMIT <N>`` with N sized to the wanted MB of upstream JSON.
The baseline is a plain httpx streaming download (bytes discarded) of the same answer from the same
emulator in the same run; throughput is upstream JSON MB per second for both, conversion (csv,
jsonl), gzip and the S3 upload included for Fetch.

By default 50 MB runs every format x compression and 500 MB a representative subset (jsonl,
csv+gzip, native); ``--full`` runs every combination at every size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx

BYTES_PER_ROW = 110  # JSON bytes per synthetic row in an ES|QL answer (measured)
MB = 1_000_000
BUCKET = "bench-results"
CONNECTION = "bench-esql"
SECRET_PREFIX = "query-relay/connections/"
RSS_GOAL_MB = 100
THROUGHPUT_GOAL = 0.5
ALL_FORMATS = [(f, c) for f in ("jsonl", "csv", "native") for c in ("none", "gzip")]
LARGE_SUBSET = [("jsonl", "none"), ("csv", "gzip"), ("native", "none")]
_BIN = Path(sys.executable).parent
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
_REGION = "us-east-1"


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
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_up(url)
            yield url
        finally:
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
            yield url
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)


# --- upstream tasks and the raw baseline -----------------------------------------------------------


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


def raw_download(esql_url: str, task_id: str) -> tuple[int, float]:
    """(bytes, seconds) of a plain streaming GET of the finished task's answer."""
    started = time.perf_counter()
    size = 0
    with httpx.stream("GET", f"{esql_url}/_query/async/{task_id}", timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1024 * 1024):
            size += len(chunk)
    return size, time.perf_counter() - started


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


def run_fetch_in_child(environment: dict[str, str], event: dict[str, Any]) -> dict[str, float]:
    """Runs in a fresh process: import what the Fetch Lambda imports, then fetch and measure."""
    os.environ.update(environment)
    from query_relay import workflow  # noqa: PLC0415 - the child's own imports are part of the setup
    from query_relay.providers import esql  # noqa: F401, PLC0415 - imported by Fetch on first use

    _reset_peak()
    before = _vm_hwm_kb()
    started = time.perf_counter()
    result = workflow.fetch(event)
    seconds = time.perf_counter() - started
    return {
        "rss_growth_mb": (_vm_hwm_kb() - before) * 1024 / MB,
        "seconds": seconds,
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
class Measurement:
    size_mb: int
    output_format: str
    compression: str
    rss_growth_mb: float
    fetch_mb_per_s: float
    raw_mb_per_s: float
    stored_mb: float
    parts: int
    rows: int

    @property
    def ratio(self) -> float:
        return self.fetch_mb_per_s / self.raw_mb_per_s

    @property
    def meets_goals(self) -> bool:
        return self.rss_growth_mb < RSS_GOAL_MB and self.ratio >= THROUGHPUT_GOAL


def fetch_event(task_id: str, output_format: str, compression: str, job_id: str) -> dict[str, Any]:
    submitted = datetime.now(UTC)
    return {
        "spec": {
            "connection": CONNECTION,
            "query": {"query": "FROM synthetic_1"},
            "output": {"format": output_format, "compression": compression, "prefix": "bench/"},
        },
        "job": {
            "job_id": job_id,
            "connection": CONNECTION,
            "provider": "esql",
            "upstream_id": task_id,
            "status": "FINISHED",
            "submitted_at": submitted.isoformat(),
            "deadline": (submitted + timedelta(hours=1)).isoformat(),
        },
    }


def measure(
    s3_url: str, esql_url: str, size_mb: int, formats: list[tuple[str, str]], part_mb: int
) -> list[Measurement]:
    rows = size_mb * MB // BYTES_PER_ROW
    environment = {
        **_CREDENTIALS,
        "AWS_DEFAULT_REGION": _REGION,
        "AWS_ENDPOINT_URL": s3_url,
        "RESULTS_BUCKET": BUCKET,
        "CONNECTION_SECRET_PREFIX": SECRET_PREFIX,
        "PART_MAX_BYTES": str(part_mb * 1024 * 1024),
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_NAMESPACE": "QueryRelayBench",
        "POWERTOOLS_SERVICE_NAME": "query-relay-bench",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    s3 = _client("s3", s3_url)
    results: list[Measurement] = []
    for output_format, compression in formats:
        # Each measurement gets its own task and its own raw download, right before the fetch.
        task_id = start_task(esql_url, rows)
        raw_bytes, raw_seconds = raw_download(esql_url, task_id)
        event = fetch_event(
            task_id, output_format, compression, f"bench-{size_mb}-{output_format}-{compression}"
        )
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
            figures = child.submit(run_fetch_in_child, environment, event).result()
        measurement = Measurement(
            size_mb=size_mb,
            output_format=output_format,
            compression=compression,
            rss_growth_mb=figures["rss_growth_mb"],
            fetch_mb_per_s=raw_bytes / MB / figures["seconds"],
            raw_mb_per_s=raw_bytes / MB / raw_seconds,
            stored_mb=figures["stored_bytes"] / MB,
            parts=int(figures["parts"]),
            rows=int(figures["rows"]),
        )
        print(_row(measurement, raw_bytes), flush=True)
        results.append(measurement)
        _empty_bucket(s3)
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


def _row(m: Measurement, raw_bytes: int) -> str:
    verdict = "ok" if m.meets_goals else "MISSES GOAL"
    return (
        f"  {m.size_mb:>4} MB ({raw_bytes / MB:6.1f} MB JSON) {m.output_format:>6} {m.compression:>4}  "
        f"peak RSS +{m.rss_growth_mb:6.1f} MB  fetch {m.fetch_mb_per_s:6.1f} MB/s  "
        f"raw {m.raw_mb_per_s:6.1f} MB/s  ratio {m.ratio:4.2f}  "
        f"stored {m.stored_mb:6.1f} MB in {m.parts} part(s), {m.rows} rows  {verdict}"
    )


def setup(s3_url: str, esql_url: str) -> None:
    s3 = _client("s3", s3_url)
    s3.create_bucket(Bucket=BUCKET)
    secrets = _client("secretsmanager", s3_url)
    document = {"provider": "esql", "base_url": esql_url, "auth": {"type": "api_key", "api_key": "bench"}}
    secrets.create_secret(Name=SECRET_PREFIX + CONNECTION, SecretString=json.dumps(document))


def _pair(text: str) -> tuple[str, str]:
    output_format, _, compression = text.partition("/")
    return output_format, compression or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,500", help="result sizes in MB of upstream JSON (50,500)")
    parser.add_argument("--full", action="store_true", help="every format x compression at every size")
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
    print(
        f"fetch: ES|QL emulator and moto S3 in their own processes, Fetch in a fresh child each time; "
        f"parts of {args.part_mb} MiB; goals: peak RSS growth < {RSS_GOAL_MB} MB, "
        f"throughput >= {THROUGHPUT_GOAL}x the raw download",
        flush=True,
    )
    measurements: list[Measurement] = []
    with moto_s3() as s3_url, esql_emulator() as esql_url:
        setup(s3_url, esql_url)
        for size in sizes:
            formats = ALL_FORMATS if args.full or size == min(sizes) else LARGE_SUBSET
            if args.formats:
                formats = [_pair(item) for item in args.formats.split(",")]
            measurements += measure(s3_url, esql_url, size, formats, args.part_mb)
    missed = [m for m in measurements if not m.meets_goals]
    print(f"{len(measurements) - len(missed)}/{len(measurements)} measurements meet the goals", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
