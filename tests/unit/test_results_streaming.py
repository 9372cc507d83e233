"""Results streamed from a generator (as providers give them) across several parts lose no row."""

from __future__ import annotations

import contextvars
import json
import threading
import uuid
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from query_relay.json_rule import encode_json
from query_relay.models import Column, OutputSpec
from query_relay.providers.base import TabularResult
from query_relay.results import ResultWriter
from query_relay.upstream import deadline

COLUMNS = [
    Column(name="n", type="long"),
    Column(name="text", type="keyword"),
    Column(name="ok", type="boolean"),
]


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    server.stop()


def streamed_rows(count: int) -> Iterator[Sequence[Any]]:
    """A generator, like a provider's streamed answer (closing it ends the stream)."""
    for number in range(count):
        yield [number, f"row {number:05d} " + "x" * 40, number % 2 == 0]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_generator_of_rows_fills_every_part_and_loses_none(s3: Any, fmt: str) -> None:
    # Given 2,000 rows from a generator and parts of 4 KiB (many parts)
    bucket = f"results-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    result = TabularResult(columns=COLUMNS, rows=streamed_rows(2000))
    # When they are written
    written = ResultWriter(s3, bucket, part_max_bytes=4096).write("p/", result, OutputSpec(format=fmt))  # type: ignore[arg-type]
    # Then every row is stored once, in order, across many parts
    assert len(written.objects) > 10
    assert written.row_count == 2000
    numbers: list[int] = []
    for entry in written.objects:
        text = s3.get_object(Bucket=bucket, Key=entry.key)["Body"].read().decode()
        lines = text.splitlines()
        if fmt == "jsonl":
            numbers += [json.loads(line)["n"] for line in lines]
        else:
            assert lines[0] == "n,text,ok"
            numbers += [int(line.split(",")[0]) for line in lines[1:]]
    assert numbers == list(range(2000))


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": 2.5, "c": None, "d": True, "e": 'q"\n\u00e9\u65e5', "f": [1, {"g": False}]},
        {"big": 2**70, "tiny": 1e-300, "exp": 1e300},
        {"other": object.__new__(type("Stringly", (), {"__str__": lambda self: "as text"}))},
    ],
)
def test_the_fast_json_encoder_writes_exactly_what_json_dumps_writes(value: dict[str, Any]) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    assert encode_json(value) == expected


def exchanging_rows(count: int, seen: list[float | None]) -> Iterator[Sequence[Any]]:
    """Rows as a provider streams pages of them: each page inside its own exchange (a request),
    opened and closed as the rows are read; ``seen`` gets the deadline each page saw."""
    for page in range(0, count, 100):
        with deadline.exchange(None):
            seen.append(deadline._EXCHANGE_ENDS.get())
            yield from streamed_rows_from(page, min(page + 100, count))


def streamed_rows_from(first: int, end: int) -> Iterator[Sequence[Any]]:
    for number in range(first, end):
        yield [number, f"row {number:05d} " + "x" * 40, number % 2 == 0]


def test_exchanges_a_result_opens_while_its_parts_upload_keep_the_invocation_s_deadline(s3: Any) -> None:
    # Given rows read page by page, each page an exchange, across many parts whose streams
    # s3transfer reads in its own threads
    bucket = f"results-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    seen: list[float | None] = []
    result = TabularResult(columns=COLUMNS, rows=exchanging_rows(2000, seen))
    # When they are written inside an invocation's deadline
    with deadline.invocation_ends_within(600):
        written = ResultWriter(s3, bucket, part_max_bytes=4096).write(
            "p/", result, OutputSpec(format="jsonl")
        )
    # Then no exchange was ended in another context than it began in, and every page saw the deadline
    assert written.row_count == 2000
    assert len(written.objects) > 10
    assert len(seen) == 20
    assert None not in seen


def test_an_exchange_a_generator_leaves_open_ends_quietly_wherever_it_is_finalized() -> None:
    # Given a generator suspended inside an exchange, in one thread's context
    def page() -> Generator[int]:
        with deadline.exchange(5):
            yield 1

    context = contextvars.copy_context()
    rows = page()
    assert context.run(next, rows) == 1
    # When another thread closes it (as the garbage collector may)
    errors: list[BaseException] = []

    def close() -> None:
        try:
            rows.close()
        except BaseException as error:  # noqa: BLE001 - recorded for the assertion
            errors.append(error)

    thread = threading.Thread(target=close)
    thread.start()
    thread.join()
    # Then it ends without an error, leaving that thread's deadline alone
    assert errors == []
    assert context.run(deadline._EXCHANGE_ENDS.get) is not None  # its own context still says it
