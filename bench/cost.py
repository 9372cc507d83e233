"""What landing a result costs, by the Fetch function's memory size: time, Lambda GB-s, S3 requests and
state transitions for 1 MB, 1 GB and 10 GB of upstream JSON.

    .venv/bin/python -m bench.cost [--size-mb 20] [--memories 128,512,1024,1769]
                                   [--outputs jsonl,csv/gzip,native]

Lambda gives a function CPU in proportion to its memory, a full vCPU at 1,769 MB. Here Fetch runs in
a child process whose parent lets it run only memory / 1,769 of each 10 ms (SIGCONT, then SIGSTOP
for the rest of the period: the share of a core the function would get); at 1,769 MB it runs
free. moto's S3, the ES|QL emulator and the fast source (the emulator's answer served from memory,
as in bench/fetch.py) run in their own processes, unthrottled, as AWS's would.

The child first fetches a 100-row result at full speed (an earlier invocation of a warm container:
clients created, modules imported). Then, throttled, each step timed: another 100-row result (what
any result costs, however small), ``--size-mb`` of upstream JSON from the fast source, and a read of
that answer to its end with its rows decoded and dropped (what a later Fetch invocation spends
skipping the rows the earlier ones landed). It counts the S3 requests Fetch sends (on its client)
and reports its peak RSS (VmHWM, the whole process: a function whose peak passes its memory size
is stopped).

From those, for a result of S bytes: work = small-result time + S x (measured time - small-result
time) / measured bytes; invocations = as many as the work needs at 840 s each (900 s less the 60 s
reserve), each later one first skipping the rows landed before it at the measured skip rate (for
a native result: reading the landed bytes again, as its resumed upload does; the skip measured is
the answer's chunks read to the end, without their sha256); GB-s = time x memory / 1024; S3
requests (billed: PUT, POST, LIST; DELETE is free) = per invocation those of the small result
beyond its one PUT, plus the uploads of S x (stored / upstream bytes) as Fetch makes them (rows:
parts of 128 MiB; native: one object, and a ListParts per later invocation; each a PUT under
8 MiB, else CreateMultipartUpload, an UploadPart per 8 MiB, Complete; the model's count for the
measured result is printed next to the count seen); transitions = 2 per invocation (Fetch, Fetched) plus
PublishReady and Succeeded. Polling's own cost is bench/poll_cost.py's. Prices are below
(us-east-1 list prices: Lambda arm64, S3 Standard requests, Step Functions Standard).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import fetch as bench_fetch

FULL_VCPU_MB = 1769
PERIOD_SECONDS = 0.01
LAMBDA_TIMEOUT_SECONDS = 900
FETCH_RESERVE_SECONDS = 60  # query_relay.workflow.FETCH_RESERVE_SECONDS
GB = 1_000_000_000
RESULT_SIZES = {"1 MB": 1_000_000, "1 GB": GB, "10 GB": 10 * GB}
# USD, us-east-1, list prices (December 2026): Lambda arm64, S3 Standard requests, Step Functions.
GB_SECOND_PRICE = 0.0000133334
INVOCATION_PRICE = 0.20 / 1_000_000
S3_WRITE_PRICE = 0.005 / 1000  # PUT, COPY, POST, LIST (CreateMultipartUpload, UploadPart, ...)
TRANSITION_PRICE = 0.000025
S3_FREE = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload"})  # DELETE is free
PART_MIB = 128
MIN_WRITING_SHARE = 0.1  # a later invocation that cannot write for a tenth of its time: no landing


def _child(conn: Connection, environment: dict[str, str], events: dict[str, dict[str, Any]]) -> None:
    """The Fetch function: warm up at full speed (an earlier invocation of the container), then wait
    for the parent's throttle before each measured step."""
    os.environ.update(environment)
    from query_relay import aws, workflow  # noqa: PLC0415
    from query_relay.providers import NativeResult  # noqa: PLC0415

    workflow.fetch(events["warm_up"])

    requests: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        requests[event_name.rsplit(".", 1)[-1]] += 1

    aws.s3().meta.events.register("before-send.s3", count)
    figures: dict[str, Any] = {}
    for name in ("small", "fetch"):
        step = events[name]
        conn.send(("ready", name))
        conn.recv()  # the parent throttles from here
        requests.clear()
        started = time.perf_counter()
        landed = workflow.fetch(step)["result"]
        figures[name] = {
            "seconds": time.perf_counter() - started,
            "requests": dict(requests),
            "stored_bytes": landed["byte_count"],
        }
        conn.send(("done", name))
        conn.recv()
    # What a later Fetch spends skipping landed rows: the answer read to its end, rows dropped.
    conn.send(("ready", "skip"))
    conn.recv()
    job, output_format = events["fetch"]["job"], events["fetch"]["spec"]["output"]["format"]
    started = time.perf_counter()
    with (
        workflow._provider_for(job["connection"]) as provider,
        provider.fetch(job["upstream_id"], {}, output_format) as result,
    ):
        for _ in result.chunks if isinstance(result, NativeResult) else result.rows:
            pass
    figures["skip"] = {"seconds": time.perf_counter() - started}
    figures["peak_rss_mb"] = bench_fetch._vm_hwm_kb() * 1024 / 1e6
    conn.send(("done", "skip"))
    conn.recv()
    conn.send(("figures", figures))


def _throttle(pid: int, share: float, stop: threading.Event) -> None:
    """Let ``pid`` run ``share`` of every period (a CFS quota's effect), until ``stop``."""
    running = share * PERIOD_SECONDS
    while not stop.is_set():
        os.kill(pid, signal.SIGCONT)
        time.sleep(running)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(PERIOD_SECONDS - running)
    os.kill(pid, signal.SIGCONT)


def run_child(
    memory_mb: int, environment: dict[str, str], events: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The child's figures, each measured step run at ``memory_mb``'s share of a core."""
    parent, child_end = multiprocessing.get_context("spawn").Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_child, args=(child_end, environment, events), daemon=True
    )
    child.start()
    share = memory_mb / FULL_VCPU_MB
    stop = threading.Event()
    throttle = threading.Thread()
    try:
        while True:
            kind, payload = parent.recv()
            if kind == "figures":
                return payload  # type: ignore[no-any-return]
            if kind == "ready":
                stop = threading.Event()
                throttle = threading.Thread(target=_throttle, args=(child.pid, share, stop), daemon=True)
                if share < 1:
                    throttle.start()
                parent.send("go")
            else:  # done
                stop.set()
                if throttle.is_alive():
                    throttle.join()
                parent.send("next")
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()


@dataclass(frozen=True)
class Cost:
    memory_mb: int
    output: str
    json_bytes: int  # of the measured result
    small_seconds: float  # a 100-row result, warm
    fetch_seconds: float
    skip_seconds: float
    small_requests: dict[str, int]
    fetch_requests: dict[str, int]
    stored_bytes: int  # of the measured result
    small_stored_bytes: int
    peak_rss_mb: float

    @property
    def fixed_requests(self) -> int:
        """Billed S3 requests of a Fetch beyond its parts' uploads (listing, the manifest)."""
        return _billed(self.small_requests) - _part_requests(self.small_stored_bytes)

    @property
    def seconds_per_byte(self) -> float:
        return max(self.fetch_seconds - self.small_seconds, 0.0) / self.json_bytes

    @property
    def skip_seconds_per_byte(self) -> float:
        return self.skip_seconds / self.json_bytes

    @property
    def fits(self) -> bool:
        return self.peak_rss_mb < self.memory_mb

    def landing(self, size: int) -> Landing | None:
        """What landing ``size`` bytes of upstream JSON takes, from the measured rates."""
        work = self.small_seconds + size * self.seconds_per_byte
        usable = LAMBDA_TIMEOUT_SECONDS - FETCH_RESERVE_SECONDS
        invocations, seconds, written = 1, 0.0, 0.0
        # Each invocation skips what the earlier ones landed, then writes as much as its time allows.
        while True:
            skip = written * self.skip_seconds_per_byte
            room = usable - skip
            if room < MIN_WRITING_SHARE * usable:
                return None  # skipping what earlier invocations landed takes (nearly) all of one
            left = work - written * self.seconds_per_byte
            if left <= room:
                seconds += skip + left
                break
            seconds += skip + room
            written += room / self.seconds_per_byte
            invocations += 1
        return Landing(
            seconds=seconds,
            invocations=invocations,
            gb_seconds=seconds * self.memory_mb / 1024,
            s3_requests=invocations * self.fixed_requests
            + self.upload_requests(size * self.stored_bytes // self.json_bytes, invocations),
            transitions=2 * invocations + 2,
        )

    def upload_requests(self, stored_bytes: int, invocations: int) -> int:
        if not self.output.startswith("native"):
            return _part_requests(stored_bytes)
        # One object, one multipart upload over every invocation; each later one lists its parts.
        chunk = 8 * 1024 * 1024
        upload = 1 if stored_bytes <= chunk else 2 + math.ceil(stored_bytes / chunk)
        return upload + invocations - 1


def _billed(requests: dict[str, int]) -> int:
    return sum(count for name, count in requests.items() if name not in S3_FREE)


def _part_requests(stored_bytes: int) -> int:
    """S3 requests that upload ``stored_bytes`` as Fetch does: parts of PART_MIB, each one PUT when
    under a multipart chunk, else CreateMultipartUpload, one UploadPart per 8 MiB, Complete."""
    chunk, part = 8 * 1024 * 1024, PART_MIB * 1024 * 1024
    requests = 0
    for start in range(0, max(stored_bytes, 1), part):
        size = min(part, stored_bytes - start)
        requests += 1 if size < chunk else 2 + math.ceil(size / chunk)
    return requests


@dataclass(frozen=True)
class Landing:
    seconds: float
    invocations: int
    gb_seconds: float
    s3_requests: int
    transitions: int

    @property
    def dollars(self) -> float:
        return (
            self.gb_seconds * GB_SECOND_PRICE
            + self.invocations * INVOCATION_PRICE
            + self.s3_requests * S3_WRITE_PRICE
            + self.transitions * TRANSITION_PRICE
        )


def measure(s3_url: str, esql_url: str, task_id: str, json_bytes: int, output: str, memory_mb: int) -> Cost:
    output_format, _, compression = output.partition("/")
    compression = compression or "none"
    job = f"cost-{memory_mb}-{output_format}-{compression}"
    environment = bench_fetch._fetch_environment(s3_url, PART_MIB)
    events = {
        "warm_up": bench_fetch.warm_up_event(esql_url, output_format, compression, job),
        "small": bench_fetch.warm_up_event(esql_url, output_format, compression, f"{job}-small"),
        "fetch": bench_fetch.fetch_event(
            bench_fetch.FAST_CONNECTION, task_id, output_format, compression, job
        ),
    }
    figures = run_child(memory_mb, environment, events)
    bench_fetch._empty_bucket(bench_fetch._client("s3", s3_url))
    return Cost(
        memory_mb=memory_mb,
        output=output,
        json_bytes=json_bytes,
        small_seconds=figures["small"]["seconds"],
        fetch_seconds=figures["fetch"]["seconds"],
        skip_seconds=figures["skip"]["seconds"],
        small_requests=figures["small"]["requests"],
        fetch_requests=figures["fetch"]["requests"],
        stored_bytes=figures["fetch"]["stored_bytes"],
        small_stored_bytes=figures["small"]["stored_bytes"],
        peak_rss_mb=figures["peak_rss_mb"],
    )


def _measured_row(cost: Cost) -> str:
    modelled = cost.fixed_requests + cost.upload_requests(cost.stored_bytes, 1)
    fits = "" if cost.fits else f"  OVER MEMORY (peak RSS {cost.peak_rss_mb:.0f} MB > {cost.memory_mb} MB)"
    return (
        f"    {cost.memory_mb:>5} MB {cost.output:<10} small result {cost.small_seconds:6.2f} s  "
        f"{cost.json_bytes / 1e6:.0f} MB: {cost.fetch_seconds:6.2f} s "
        f"({cost.json_bytes / 1e6 / max(cost.fetch_seconds - cost.small_seconds, 1e-9):5.1f} MB/s)  "
        f"skip {cost.json_bytes / 1e6 / cost.skip_seconds:6.1f} MB/s  S3 requests billed "
        f"{_billed(cost.fetch_requests)} (model {modelled})  peak RSS {cost.peak_rss_mb:.0f} MB{fits}"
    )


def _cost_rows(cost: Cost) -> list[str]:
    rows = []
    for label, size in RESULT_SIZES.items():
        landing = cost.landing(size)
        if landing is None:
            where = f"    {cost.memory_mb:>5} MB {cost.output:<10} {label:>5}"
            rows.append(f"{where}: cannot land (skipping outlasts)")
            continue
        rows.append(
            f"    {cost.memory_mb:>5} MB {cost.output:<10} {label:>5}: {landing.seconds:8.1f} s in "
            f"{landing.invocations:>2} invocation(s), {landing.gb_seconds:9.1f} GB-s, "
            f"{landing.s3_requests:>5} S3 requests, {landing.transitions:>2} transitions: "
            f"${landing.dollars:.4f}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size-mb", type=int, default=20, help="the measured result, MB of upstream JSON (20)"
    )
    parser.add_argument("--memories", default="128,512,1024,1769", help="Fetch memory sizes in MB")
    parser.add_argument("--outputs", default="jsonl,csv/gzip,native", help="format[/compression] list")
    args = parser.parse_args(argv)
    memories = [int(memory) for memory in args.memories.split(",")]
    outputs = args.outputs.split(",")
    rows = args.size_mb * bench_fetch.MB // bench_fetch.BYTES_PER_ROW
    print(
        f"cost: Fetch at each memory size's share of a core (memory / {FULL_VCPU_MB}), warm; "
        f"{args.size_mb} MB of upstream JSON from the fast source, parts of {PART_MIB} MiB",
        flush=True,
    )
    costs: list[Cost] = []
    with (
        bench_fetch.moto_s3() as s3_url,
        bench_fetch.esql_emulator() as esql_url,
        tempfile.TemporaryDirectory(prefix="bench-cost-") as workdir,
    ):
        bench_fetch.setup(s3_url, esql_url)
        task_id = bench_fetch.start_task(esql_url, rows)
        answer_path = Path(workdir) / "answer.json"
        json_bytes = bench_fetch.render_answer(esql_url, task_id, answer_path)
        with bench_fetch.fast_upstream(answer_path) as fast_url:
            bench_fetch.save_connection(s3_url, bench_fetch.FAST_CONNECTION, fast_url)
            print("  measured:", flush=True)
            for output in outputs:
                for memory in memories:
                    costs.append(measure(s3_url, esql_url, task_id, json_bytes, output, memory))
                    print(_measured_row(costs[-1]), flush=True)
    print("  modelled from those rates (Fetch only; polling is bench/poll_cost.py's):", flush=True)
    for cost in costs:
        for row in _cost_rows(cost):
            print(row, flush=True)
    print("  cheapest memory size per GB (among those that fit):", flush=True)
    for output in outputs:
        per_gb = {
            cost.memory_mb: landing.dollars
            for cost in costs
            if cost.output == output and cost.fits and (landing := cost.landing(GB)) is not None
        }
        if per_gb:
            best = min(per_gb, key=per_gb.__getitem__)
            print(f"    {output}: {best} MB, ${per_gb[best]:.4f} per GB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
