"""What one huge cell costs the row readers (issue 13: "one 128 MB cell takes 142 s").

    .venv/bin/python bench/cells.py [--sizes 1,4,16,64] [--cases string,csv-line] [--timeout 300]

A body holding one row with one cell of N MB is fed in 64 KiB chunks (what httpx hands on: httpcore
reads 64 KiB at a time and ``iter_bytes()`` passes the reads through) to

- ``ArrayRows`` (ES|QL ``values``: blocks of rows decoded by orjson, a row alone by the json
  module), fed the text after the ``[`` that opens ``values``, as ``PathReader`` feeds it;
- ``DelimitedRecords`` (CSV, over ``text_lines``), header and rows.

Next to each, in the same run, the CPU's own limit on the same bytes: ``json.loads`` of the whole
body, and ``csv.reader`` over one ``io.StringIO`` of it. Every measurement runs in a fresh child
process that builds the body, resets its peak RSS (VmHWM) and reports seconds and peak RSS growth;
one that takes longer than ``--timeout`` is killed and shown as such.

The cases: ``string`` (plain text), ``escaped`` (a string of ``"``, ``]``, ``,``, ``[`` and ``\\``,
all of them escaped or meaningful to a naive scan), ``nested`` (an array of small arrays),
``object`` (an object of many keys) and ``rows`` (no big cell: N MB of small rows, the common case);
for CSV ``csv-line`` (a quoted cell with commas and quotes on one line), ``csv-lines`` (the same
with a line break every 80 characters) and ``csv-rows`` (N MB of small records). The csv module
refuses a field longer than ``csv.field_size_limit()`` (128 KiB unless raised); importing
``query_relay.upstream.stream`` raises it (a cell has no bound of its own), for the ``csv.reader``
baseline too.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import io
import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from query_relay.upstream.errors import Where
from query_relay.upstream.rows import ArrayRows
from query_relay.upstream.stream import DelimitedRecords

MB = 1_000_000
CHUNK = 64 * 1024
JSON_CASES = ["string", "escaped", "nested", "object", "rows"]
CSV_CASES = ["csv-line", "csv-lines", "csv-rows"]
VALUES_PREFIX = b'{"columns":[{"name":"a","type":"keyword"}],"values":['
WHERE = Where("bench", "cells", "bench read")


# --- bodies ----------------------------------------------------------------------------------------


def _repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def json_body(case: str, size: int) -> bytes:
    """An ES|QL-like answer whose ``values`` hold one row with a cell of about ``size`` bytes (or,
    for ``rows``, ``size`` bytes of small rows)."""
    if case == "string":
        values: list[Any] = [[1, _repeat("lorem ipsum dolor sit amet ", size)]]
    elif case == "escaped":
        values = [[1, _repeat('a"],[\\,', size * 7 // 9)]]  # 7 characters, 9 bytes in JSON
    elif case == "nested":
        values = [[1, [[i, "ab", [i]] for i in range(size // 21)]]]
    elif case == "object":
        values = [[1, {f"k{i}": [i, "v"] for i in range(size // 20)}]]
    elif case == "rows":
        row = ["2024-01-01T00:00:00.000Z", 12345, "host-17", 1.5, ["a", "b"], None]
        values = [row] * (size // len(json.dumps(row, separators=(",", ":"))))
    else:
        raise ValueError(case)
    body = json.dumps({"values": values}, separators=(",", ":")).encode()
    return VALUES_PREFIX + body[len(b'{"values":[') :]


def csv_body(case: str, size: int) -> bytes:
    if case == "csv-line":
        records = [["a", "b"], ["1", _repeat('lorem, "ipsum" dolor ', size)]]
    elif case == "csv-lines":
        records = [["a", "b"], ["1", _repeat(_repeat('lorem, "ipsum" dolor ', 79) + "\n", size)]]
    elif case == "csv-rows":
        row = ["2024-01-01T00:00:00.000Z", "12345", "host-17", "1.5", "a b"]
        records = [["a", "b", "c", "d", "e"], *[row] * (size // 48)]
    else:
        raise ValueError(case)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(records)
    return text.getvalue().encode()


def chunks_of(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), CHUNK):
        yield body[start : start + CHUNK]


# --- the readers -----------------------------------------------------------------------------------


def read_array_rows(body: bytes) -> int:
    """The rows ``ArrayRows`` reads, fed as ``PathReader`` feeds it (the text after ``values``' ``[``)."""
    rows_text = ArrayRows()
    rows: list[list[Any]] = []
    skip = len(VALUES_PREFIX)
    for chunk in chunks_of(body):
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        rows_text.feed(chunk[skip:], rows)
        skip = 0
        if rows_text.done:
            break
    else:
        rows_text.finish()
    assert rows_text.done
    assert rows_text.rest.strip() == b"}", rows_text.rest[:40]
    return len(rows)


def read_json_loads(body: bytes) -> int:
    return len(json.loads(body)["values"])


def read_delimited(body: bytes) -> int:
    records = DelimitedRecords(chunks_of(body), WHERE, keep_bytes=False)
    records.read_header()
    return sum(1 for _ in records.rows())


def read_csv_reader(body: bytes) -> int:
    return sum(1 for _ in csv.reader(io.StringIO(body.decode("utf-8")))) - 1


READERS: dict[str, tuple[Callable[[bytes], int], Callable[[bytes], int]]] = {
    "json": (read_array_rows, read_json_loads),
    "csv": (read_delimited, read_csv_reader),
}


# --- one measurement per child ---------------------------------------------------------------------


def _vm_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Hand the memory freed while the body was built back to the system (else the reader would
    reuse it unseen), then start the high-water mark from the current RSS (Linux >= 4.0)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")


def measure_in_child(results: Any, case: str, size: int, baseline: bool) -> None:
    kind = "csv" if case.startswith("csv") else "json"
    body = csv_body(case, size) if kind == "csv" else json_body(case, size)
    reader = READERS[kind][1 if baseline else 0]
    _reset_peak()
    before = _vm_kb("VmRSS")
    started = time.perf_counter()
    rows = reader(body)
    seconds = time.perf_counter() - started
    growth = (_vm_kb("VmHWM") - before) * 1024 / MB
    results.put({"seconds": seconds, "mb": growth, "rows": rows, "body_mb": len(body) / MB})


def measure(case: str, size: int, *, baseline: bool, timeout: float) -> dict[str, float] | None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=measure_in_child, args=(results, case, size, baseline))
    child.start()
    try:
        figures: dict[str, float] = results.get(timeout=timeout)
    except Exception:  # noqa: BLE001 - queue.Empty: timed out (or the child died)
        figures = {}
    finally:
        if child.is_alive():
            child.kill()
        child.join()
    return figures or None


def _figures(figures: dict[str, float] | None, timeout: float) -> str:
    if figures is None:
        return f"{'> ' + format(timeout, '.0f') + ' s':>9}  {'':>10}"
    return f"{figures['seconds']:7.2f} s  +{figures['mb']:7.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sizes", default="1,4,16,64", help="cell sizes in MB (1,4,16,64; 128 is worth a try)"
    )
    parser.add_argument("--cases", default=",".join(JSON_CASES + CSV_CASES), help="which bodies")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a child is killed")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    print(
        f"cells: one row with one N MB cell in {CHUNK // 1024} KiB chunks; seconds and peak RSS growth "
        "of the reader, then of json.loads / csv.reader over the whole body",
        flush=True,
    )
    for case in args.cases.split(","):
        reader_name = "DelimitedRecords" if case.startswith("csv") else "ArrayRows"
        baseline_name = "csv.reader" if case.startswith("csv") else "json.loads"
        for size in sizes:
            ours = measure(case, size * MB, baseline=False, timeout=args.timeout)
            base = measure(case, size * MB, baseline=True, timeout=args.timeout)
            ratio = f"{ours['seconds'] / base['seconds']:6.1f}x" if ours and base else "     -"
            body_mb = (ours or base or {}).get("body_mb", float(size))
            print(
                f"  {case:>9} {size:>4} MB ({body_mb:5.1f} MB body)  {reader_name:>16} "
                f"{_figures(ours, args.timeout)}   {baseline_name} {_figures(base, args.timeout)}   "
                f"time ratio {ratio}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
