"""What Fetch's own CPU work costs, without the network or S3: decoding an ES|QL answer and encoding
its rows.

    .venv/bin/python -m bench.codec [--rows 400000] [--repeat 3]

An ES|QL answer of typical rows (a timestamp, keywords, integers, a double, a boolean, a text; about
90 bytes of JSON a row) is built in memory once. Then, each the best of ``--repeat`` runs, in CPU
seconds:

- ``decode``: the answer fed in 64 KiB chunks (what httpx hands on) to the ES|QL reader, which
  finds ``values`` and decodes its rows (``query_relay.upstream.rows``);
- ``jsonl`` and ``csv``: the rows encoded in batches of 256 (what Fetch's writer does);

and, in the same run, the CPU's limits on the same work: ``orjson.loads`` and ``json.loads`` of the
whole answer at once, and ``orjson.dumps`` of the rows as plain lists.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from query_relay.models import Column
from query_relay.providers.esql import answer as esql_answer
from query_relay.results import _CsvEncoder, _JsonLinesEncoder
from query_relay.upstream.errors import Where

CHUNK = 64 * 1024
BATCH = 256
COLUMNS = [
    ("@timestamp", "date"),
    ("host", "keyword"),
    ("status", "integer"),
    ("bytes", "long"),
    ("latency", "double"),
    ("ok", "boolean"),
    ("message", "text"),
]


def answer(count: int) -> tuple[bytes, list[list[Any]]]:
    rng = random.Random(7)
    rows: list[list[Any]] = [
        [
            f"2024-05-01T12:{i % 60:02d}:{i % 59:02d}.{i % 1000:03d}Z",
            f"host-{i % 97}",
            rng.choice([200, 301, 404, 500]),
            rng.randint(0, 10**7),
            round(rng.random() * 1000, 3),
            i % 3 == 0,
            f"GET /api/v1/items/{i}",
        ]
        for i in range(count)
    ]
    columns = [{"name": name, "type": kind} for name, kind in COLUMNS]
    document = {"id": "bench", "is_running": False, "columns": columns, "values": rows}
    return orjson.dumps(document), rows


def best_of(repeat: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def decode(document: bytes) -> list[list[Any]]:
    reader = esql_answer.reader(Where("esql", "bench", "esql fetch"), keep_rows=True)
    rows: list[list[Any]] = []
    for start in range(0, len(document), CHUNK):
        rows += reader.feed(document[start : start + CHUNK])
    rows += reader.finish()
    return rows


def encode(encoder: _JsonLinesEncoder | _CsvEncoder, rows: list[list[Any]]) -> int:
    return len(encoder.header()) + sum(
        len(encoder.encode(rows[at : at + BATCH])) for at in range(0, len(rows), BATCH)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    document, rows = answer(args.rows)
    assert decode(document) == rows
    columns = [Column(name=name, type=kind) for name, kind in COLUMNS]
    size = len(document) / 1e6
    print(f"codec: {args.rows} rows, {size:.1f} MB of ES|QL JSON, CPU seconds (best of {args.repeat})")
    measured = [
        ("decode (ES|QL reader, 64 KiB chunks)", lambda: decode(document)),
        ("  limit: orjson.loads, whole answer", lambda: orjson.loads(document)),
        ("  limit: json.loads, whole answer", lambda: json.loads(document)),
        ("encode jsonl (batches of 256)", lambda: encode(_JsonLinesEncoder(columns), rows)),
        ("encode csv (batches of 256)", lambda: encode(_CsvEncoder(columns), rows)),
        ("  limit: orjson.dumps, rows as lists", lambda: orjson.dumps(rows)),
    ]
    for label, work in measured:
        seconds = best_of(args.repeat, work)
        rate = f"{size / seconds:7.1f} MB/s of answer  {args.rows / seconds / 1e3:7.0f} k rows/s"
        print(f"  {label:38s} {seconds:6.2f} s  {rate}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
