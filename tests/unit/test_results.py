"""The result writer against S3 emulated by moto, served over HTTP on loopback."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from query_relay import results
from query_relay.exceptions import UpstreamProtocolError
from query_relay.models import Column, Manifest, OutputSpec
from query_relay.providers.base import NativeResult, TabularResult
from query_relay.results import (
    MANIFEST_NAME,
    MULTIPART_CHUNK_BYTES,
    Landed,
    ResultWriter,
    WrittenResult,
    job_prefix,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PREFIX = "results/dt=2024-05-01/job-1/"
COLUMNS = [
    Column(name="id", type="long"),
    Column(name="name", type="keyword"),
    Column(name="score", type="double"),
    Column(name="active", type="boolean"),
    Column(name="tags", type="keyword"),
    Column(name="seen_at", type="date"),
]
SEEN_AT = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
SEEN = SEEN_AT.isoformat()  # a datetime (no JSON value) is written as orjson writes it: RFC 3339
ROWS: list[list[Any]] = [
    [1, "plain", 1.5, True, ["a", "b"], SEEN_AT],
    [2, 'Zoë, "quoted"\nand multi-line', -0.25, False, {"k": [1, 2]}, None],
    [3, None, None, None, None, None],
    [4, "日本語", 1e-07, True, [], SEEN_AT],
]


class Boom(Exception):
    pass


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = f"results-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def writer(s3: S3Client, bucket: str, part_max_bytes: int = 64 * 1024 * 1024) -> ResultWriter:
    return ResultWriter(s3, bucket, part_max_bytes=part_max_bytes)


def tabular(rows: Sequence[Sequence[Any]], columns: list[Column] = COLUMNS) -> TabularResult:
    return TabularResult(columns=columns, rows=iter(rows))


def keys_under(s3: S3Client, bucket: str, prefix: str = PREFIX) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def stored_bytes(s3: S3Client, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def content_of(s3: S3Client, bucket: str, key: str) -> bytes:
    body = stored_bytes(s3, bucket, key)
    return gzip.decompress(body) if key.endswith(".gz") else body


def assert_objects_match_what_is_stored(s3: S3Client, bucket: str, written: WrittenResult) -> None:
    for entry in written.objects:
        body = stored_bytes(s3, bucket, entry.key)
        assert entry.bytes == len(body)
        assert entry.sha256 == hashlib.sha256(body).hexdigest()
    assert written.byte_count == sum(entry.bytes for entry in written.objects)
    assert sorted(keys_under(s3, bucket)) == [entry.key for entry in written.objects]


def jsonl_rows(data: bytes) -> list[dict[str, Any]]:
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.decode().splitlines()]


def csv_records(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def numbered_rows(count: int, payload_size: int = 40) -> list[list[Any]]:
    return [[index, f"{index:08d}" + "x" * payload_size] for index in range(count)]


NUMBERED_COLUMNS = [Column(name="n", type="long"), Column(name="payload", type="keyword")]


def manifest_for(written: WrittenResult) -> Manifest:
    return Manifest(
        job_id="job-1",
        connection="es-prod",
        provider="esql",
        upstream_id="FmNJRUZ1YWZCU3dHY1BIOUhaenVSRkEaaXFlZ3h4c1RTWFNocDdnY2FSaERnUTozNDE=",
        format="jsonl",
        compression="none",
        row_count=written.row_count,
        byte_count=written.byte_count,
        columns=written.columns,
        objects=written.objects,
        submitted_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        completed_at=datetime(2024, 5, 1, 12, 5, tzinfo=UTC),
        polls=3,
    )


# --- keys ----------------------------------------------------------------------------------------


def test_job_prefix_uses_the_utc_day_of_submission() -> None:
    # Given a submission at 01:30 in UTC+2, which is still the previous day in UTC
    submitted_at = datetime(2024, 5, 2, 1, 30, tzinfo=timezone(timedelta(hours=2)))

    # When the job prefix is built
    prefix = job_prefix(OutputSpec(prefix="exports/esql"), "job-1", submitted_at)

    # Then it carries the UTC date under the output prefix
    assert prefix == "exports/esql/dt=2024-05-01/job-1/"


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_jsonl_round_trips_every_row_keyed_by_column(s3: S3Client, bucket: str, compression: str) -> None:
    # Given rows with unicode, nulls, nested values and a non-JSON value
    output = OutputSpec(format="jsonl", compression=compression)  # type: ignore[arg-type]

    # When they are written
    written = writer(s3, bucket).write(PREFIX, tabular(ROWS), output)

    # Then one object holds one compact JSON object per row, and the figures match what is stored
    suffix = ".gz" if compression == "gzip" else ""
    assert [entry.key for entry in written.objects] == [f"{PREFIX}part-00000.jsonl{suffix}"]
    data = content_of(s3, bucket, written.objects[0].key)
    assert jsonl_rows(data) == [
        {"id": 1, "name": "plain", "score": 1.5, "active": True, "tags": ["a", "b"], "seen_at": SEEN},
        {
            "id": 2,
            "name": 'Zoë, "quoted"\nand multi-line',
            "score": -0.25,
            "active": False,
            "tags": {"k": [1, 2]},
            "seen_at": None,
        },
        {"id": 3, "name": None, "score": None, "active": None, "tags": None, "seen_at": None},
        {"id": 4, "name": "日本語", "score": 1e-07, "active": True, "tags": [], "seen_at": SEEN},
    ]
    assert "日本語".encode() in data  # not \u-escaped
    assert b'{"id":1,"name":"plain",' in data  # compact separators
    assert written.row_count == written.objects[0].rows == len(ROWS)
    assert written.columns == COLUMNS
    assert_objects_match_what_is_stored(s3, bucket, written)
    head = s3.head_object(Bucket=bucket, Key=written.objects[0].key)
    assert head["ContentType"] == ("application/gzip" if compression == "gzip" else "application/x-ndjson")
    assert "ContentEncoding" not in head


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_csv_round_trips_a_header_and_every_row(s3: S3Client, bucket: str, compression: str) -> None:
    # Given the same rows, written as CSV
    output = OutputSpec(format="csv", compression=compression)  # type: ignore[arg-type]

    # When they are written
    written = writer(s3, bucket).write(PREFIX, tabular(ROWS), output)

    # Then a CSV reader gets the header and the rows back (nulls empty, nested values as JSON)
    suffix = ".gz" if compression == "gzip" else ""
    assert [entry.key for entry in written.objects] == [f"{PREFIX}part-00000.csv{suffix}"]
    assert csv_records(content_of(s3, bucket, written.objects[0].key)) == [
        ["id", "name", "score", "active", "tags", "seen_at"],
        ["1", "plain", "1.5", "true", '["a","b"]', str(SEEN_AT)],
        ["2", 'Zoë, "quoted"\nand multi-line', "-0.25", "false", '{"k":[1,2]}', ""],
        ["3", "", "", "", "", ""],
        ["4", "日本語", "1e-07", "true", "[]", str(SEEN_AT)],
    ]
    assert written.row_count == written.objects[0].rows == len(ROWS)
    assert_objects_match_what_is_stored(s3, bucket, written)
    head = s3.head_object(Bucket=bucket, Key=written.objects[0].key)
    assert head["ContentType"] == ("application/gzip" if compression == "gzip" else "text/csv")


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_native_stores_the_upstream_bytes_untouched(s3: S3Client, bucket: str, compression: str) -> None:
    # Given an upstream body in uneven chunks whose rows the provider counts as they are read
    body = json.dumps({"columns": [{"name": "n", "type": "long"}], "values": [[1], [2], [3]]}).encode()
    counted = [0]

    def chunks() -> Iterator[bytes]:
        yield body[:7]
        yield body[7:50]
        yield body[50:]
        counted[0] = 3

    columns = [Column(name="n", type="long")]
    result = NativeResult(chunks=chunks(), extension="json", columns=columns, counted=lambda: counted[0])
    output = OutputSpec(format="native", compression=compression)  # type: ignore[arg-type]

    # When it is written
    written = writer(s3, bucket).write(PREFIX, result, output)

    # Then one object holds exactly those bytes, with the row count known at the end
    suffix = ".gz" if compression == "gzip" else ""
    assert [entry.key for entry in written.objects] == [f"{PREFIX}part-00000.json{suffix}"]
    assert content_of(s3, bucket, written.objects[0].key) == body
    assert written.row_count == written.objects[0].rows == 3
    assert written.columns == [Column(name="n", type="long")]
    assert_objects_match_what_is_stored(s3, bucket, written)
    head = s3.head_object(Bucket=bucket, Key=written.objects[0].key)
    assert head["ContentType"] == ("application/gzip" if compression == "gzip" else "application/json")


def test_rows_cannot_be_written_as_native(s3: S3Client, bucket: str) -> None:
    # Given rows but a native output
    # When they are written / Then the writer refuses instead of inventing bytes
    with pytest.raises(ValueError, match="NativeResult"):
        writer(s3, bucket).write(PREFIX, tabular(ROWS), OutputSpec(format="native"))


def test_a_row_of_the_wrong_width_fails_the_write(s3: S3Client, bucket: str) -> None:
    # Given a row with one value fewer than the columns
    # When it is written / Then the mismatch is an error, not a silently shifted record
    with pytest.raises(ValueError):  # noqa: PT011 - zip(strict=True) words it its own way
        writer(s3, bucket).write(PREFIX, tabular([[1, "a"]]), OutputSpec(format="jsonl"))


# --- parts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "compression"), [("jsonl", "none"), ("jsonl", "gzip"), ("csv", "gzip")])
def test_rows_roll_into_parts_without_splitting_or_losing_any(
    s3: S3Client, bucket: str, fmt: str, compression: str
) -> None:
    # Given 300 rows of ~70 bytes and parts capped at 1 KiB
    rows = numbered_rows(300)
    output = OutputSpec(format=fmt, compression=compression)  # type: ignore[arg-type]

    # When they are written
    written = writer(s3, bucket, part_max_bytes=1024).write(PREFIX, tabular(rows, NUMBERED_COLUMNS), output)

    # Then every part rolled right after the row that filled it, and all rows come back once, in order
    extension = f"{fmt}.gz" if compression == "gzip" else fmt
    assert [entry.key for entry in written.objects] == [
        f"{PREFIX}part-{index:05d}.{extension}" for index in range(len(written.objects))
    ]
    assert len(written.objects) > 10
    read_back: list[list[Any]] = []
    for position, entry in enumerate(written.objects):
        data = content_of(s3, bucket, entry.key)
        if fmt == "jsonl":
            records = [[row["n"], row["payload"]] for row in jsonl_rows(data)]
            last_record_bytes = len(data.splitlines(keepends=True)[-1])
        else:
            header, *body = csv_records(data)
            assert header == ["n", "payload"]
            records = [[int(n), payload] for n, payload in body]
            last_record_bytes = len(data.splitlines(keepends=True)[-1])
        assert entry.rows == len(records) > 0
        if position < len(written.objects) - 1:
            assert len(data) >= 1024 > len(data) - last_record_bytes
        read_back.extend(records)
    assert read_back == rows
    assert written.row_count == len(rows)
    assert_objects_match_what_is_stored(s3, bucket, written)


@pytest.mark.parametrize(
    ("fmt", "compression", "expected"),
    [
        ("jsonl", "none", b""),
        ("jsonl", "gzip", b""),
        ("csv", "none", b"n,payload\r\n"),
    ],
)
def test_zero_rows_still_write_the_first_part(
    s3: S3Client, bucket: str, fmt: str, compression: str, expected: bytes
) -> None:
    # Given a result without rows
    output = OutputSpec(format=fmt, compression=compression)  # type: ignore[arg-type]

    # When it is written
    written = writer(s3, bucket).write(PREFIX, tabular([], NUMBERED_COLUMNS), output)

    # Then part-00000 exists (empty, or the CSV header alone) so consumers always find an object
    assert len(written.objects) == 1
    assert written.objects[0].key.startswith(f"{PREFIX}part-00000.{fmt}")
    assert content_of(s3, bucket, written.objects[0].key) == expected
    assert written.row_count == written.objects[0].rows == 0
    assert_objects_match_what_is_stored(s3, bucket, written)


def test_a_part_larger_than_a_multipart_chunk_round_trips(s3: S3Client, bucket: str) -> None:
    # Given ~20 MB of rows in one part, more than two multipart chunks
    rows = numbered_rows(20_000, payload_size=1000)

    # When they are written
    written = writer(s3, bucket).write(PREFIX, tabular(rows, NUMBERED_COLUMNS), OutputSpec())

    # Then the single object was uploaded in several chunks and holds every row in order
    (entry,) = written.objects
    assert entry.bytes > 2 * MULTIPART_CHUNK_BYTES
    etag = s3.head_object(Bucket=bucket, Key=entry.key)["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart upload's ETag counts its chunks
    assert [[row["n"], row["payload"]] for row in jsonl_rows(content_of(s3, bucket, entry.key))] == rows
    assert_objects_match_what_is_stored(s3, bucket, written)


# --- re-runs, failures, manifest ----------------------------------------------------------------


def test_a_rerun_that_writes_fewer_parts_deletes_the_older_ones(s3: S3Client, bucket: str) -> None:
    # Given an earlier run that wrote many parts and a manifest, and an object of a sibling job
    result_writer = writer(s3, bucket, part_max_bytes=1024)
    first = result_writer.write(PREFIX, tabular(numbered_rows(200), NUMBERED_COLUMNS), OutputSpec())
    result_writer.write_manifest(PREFIX, manifest_for(first))
    sibling = "results/dt=2024-05-01/job-10/part-00000.jsonl"
    s3.put_object(Bucket=bucket, Key=sibling, Body=b"{}\n")
    assert len(first.objects) > 3

    # When the same job is written again with fewer rows
    second = result_writer.write(PREFIX, tabular(numbered_rows(20), NUMBERED_COLUMNS), OutputSpec())

    # Then only this run's parts remain under the prefix (no manifest yet), and the sibling is untouched
    assert len(second.objects) == 2
    assert sorted(keys_under(s3, bucket)) == [entry.key for entry in second.objects]
    assert keys_under(s3, bucket, "results/dt=2024-05-01/job-10/") == [sibling]


def test_write_deletes_the_manifest_before_any_part_and_write_manifest_writes_it(
    s3: S3Client, bucket: str
) -> None:
    # Given a complete earlier run with its manifest
    result_writer = writer(s3, bucket)
    first = result_writer.write(PREFIX, tabular(ROWS), OutputSpec())
    manifest_key = result_writer.write_manifest(PREFIX, manifest_for(first))
    manifest_seen_while_writing: list[bool] = []

    def rows() -> Iterator[Sequence[Any]]:
        manifest_seen_while_writing.append(MANIFEST_NAME in "".join(keys_under(s3, bucket)))
        yield from ROWS

    # When the job is written again
    second = result_writer.write(PREFIX, TabularResult(columns=COLUMNS, rows=rows()), OutputSpec())

    # Then the manifest was gone before the first row was read, and write_manifest puts it back last
    assert manifest_seen_while_writing == [False]
    assert MANIFEST_NAME not in "".join(keys_under(s3, bucket))
    manifest = manifest_for(second)
    assert result_writer.write_manifest(PREFIX, manifest) == manifest_key == PREFIX + MANIFEST_NAME
    stored = s3.get_object(Bucket=bucket, Key=manifest_key)
    assert stored["ContentType"] == "application/json"
    assert json.loads(stored["Body"].read()) == manifest.model_dump(mode="json")


def test_rows_failing_half_way_leave_no_part_upload_and_no_manifest(s3: S3Client, bucket: str) -> None:
    # Given an earlier manifest, and rows that fail after more than one multipart chunk was produced
    result_writer = writer(s3, bucket)
    first = result_writer.write(PREFIX, tabular(ROWS), OutputSpec())
    result_writer.write_manifest(PREFIX, manifest_for(first))

    def rows() -> Iterator[Sequence[Any]]:
        yield from numbered_rows(10_000, payload_size=1000)  # ~10 MB
        raise Boom("upstream connection reset")

    uploads_started: list[str] = []
    s3.meta.events.register(
        "after-call.s3.CreateMultipartUpload",
        lambda parsed, **_: uploads_started.append(parsed["UploadId"]),
    )

    # When the job is written again
    with pytest.raises(Boom):
        result_writer.write(PREFIX, TabularResult(columns=NUMBERED_COLUMNS, rows=rows()), OutputSpec())

    # Then the multipart upload it had started was aborted, and no manifest sits next to what is left
    assert len(uploads_started) == 1
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert MANIFEST_NAME not in "".join(keys_under(s3, bucket))
    assert stored_bytes(s3, bucket, f"{PREFIX}part-00000.jsonl") != b""  # the earlier part, not a new one
    assert len(jsonl_rows(stored_bytes(s3, bucket, f"{PREFIX}part-00000.jsonl"))) == len(ROWS)


def test_discard_deletes_the_job_and_its_unfinished_uploads_only(s3: S3Client, bucket: str) -> None:
    # Given a job with parts, a manifest and an unfinished multipart upload, next to a sibling job
    result_writer = writer(s3, bucket, part_max_bytes=1024)
    written = result_writer.write(PREFIX, tabular(numbered_rows(60), NUMBERED_COLUMNS), OutputSpec())
    result_writer.write_manifest(PREFIX, manifest_for(written))
    s3.create_multipart_upload(Bucket=bucket, Key=f"{PREFIX}part-00099.jsonl")
    sibling = "results/dt=2024-05-01/job-10/part-00000.jsonl"
    s3.put_object(Bucket=bucket, Key=sibling, Body=b"{}\n")

    # When the job is discarded
    deleted = result_writer.discard(PREFIX)

    # Then its parts and manifest are gone, counted, its upload aborted, and the sibling remains
    assert deleted == len(written.objects) + 1
    assert keys_under(s3, bucket) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert keys_under(s3, bucket, "results/") == [sibling]
    assert result_writer.discard(PREFIX) == 0


# --- going on from an earlier Fetch ----------------------------------------------------------------


def _rows(count: int) -> list[list[Any]]:
    return [[index, f"name {index}", index * 1.5, True, None, None] for index in range(count)]


def test_a_write_going_on_from_landed_parts_skips_their_rows(s3: S3Client, bucket: str) -> None:
    # Given parts of 2 rows (100 bytes), and one write that stops after its first part
    small = writer(s3, bucket, part_max_bytes=100)
    first = small.write(PREFIX, tabular(_rows(10)), OutputSpec(), stop=lambda: True)
    assert not first.finished
    assert [entry.key.rsplit("/", 1)[1] for entry in first.objects] == ["part-00000.jsonl"]
    # When the next write goes on from it, with the answer read again from its start
    landed = Landed(objects=first.objects, rows=first.row_count)
    rest = small.write(PREFIX, tabular(_rows(10)), OutputSpec(), landed=landed)
    # Then it skipped the landed rows and wrote the next parts, listing all of them
    assert rest.finished
    assert rest.objects[0] == first.objects[0]
    assert rest.row_count == 10
    lines = b"".join(stored_bytes(s3, bucket, entry.key) for entry in rest.objects).splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(10))
    assert sorted(keys_under(s3, bucket)) == sorted(entry.key for entry in rest.objects)


@pytest.mark.parametrize("rows_read_again", [1, 2], ids=["fewer rows", "no more rows"])
def test_an_answer_read_again_that_cannot_be_the_same_is_an_upstream_protocol_error(
    s3: S3Client, bucket: str, rows_read_again: int
) -> None:
    small = writer(s3, bucket, part_max_bytes=100)
    first = small.write(PREFIX, tabular(_rows(10)), OutputSpec(), stop=lambda: True)
    assert first.row_count == 2
    landed = Landed(objects=first.objects, rows=first.row_count)
    with pytest.raises(UpstreamProtocolError, match="not the answer the earlier Fetch read"):
        small.write(PREFIX, tabular(_rows(rows_read_again)), OutputSpec(), landed=landed)


def test_a_native_result_goes_on_from_its_upload_not_from_parts(s3: S3Client, bucket: str) -> None:
    native = NativeResult(chunks=iter([b"[]"]), extension="json")
    landed = Landed(objects=[], rows=0)
    with pytest.raises(ValueError, match="unfinished upload, not from parts"):
        writer(s3, bucket).write(PREFIX, native, OutputSpec(format="native"), landed=landed)


# A native object over 3 chunks of S3's least multipart chunk (5 MiB) and a bit: 4 chunks.
CHUNK = 5 * 1024 * 1024
NATIVE_BODY = random.Random(15).randbytes(3 * CHUNK + 12_345)


def native_answer(body: bytes = NATIVE_BODY, seed: int = 0) -> NativeResult:
    """``body`` in uneven pieces (other ones for each seed, as a body read again comes), its rows
    counted (one per 1,000 bytes) once they are all read."""
    pieces = random.Random(seed)
    counted = [0]

    def chunks() -> Iterator[bytes]:
        start = 0
        while start < len(body):
            size = pieces.choice([1, 999, 65_536, 1_048_577])
            yield body[start : start + size]
            start += size
        counted[0] = len(body) // 1000

    return NativeResult(chunks=chunks(), extension="json", counted=lambda: counted[0])


def write_native_in_fetches(
    result_writer: ResultWriter, answers: Iterator[NativeResult], output: OutputSpec
) -> tuple[WrittenResult, int]:
    """Write as Fetches that each stop after their first chunk: the last result, and how many."""
    landed: Landed | None = None
    for fetches, answer in enumerate(answers, start=1):
        written = result_writer.write(PREFIX, answer, output, landed=landed, stop=lambda: True)
        if written.finished:
            return written, fetches
        assert written.upload is not None
        assert (written.objects, written.upload.parts, written.upload.bytes) == ([], fetches, fetches * CHUNK)
        landed = Landed(objects=[], rows=0, upload=written.upload)
    raise AssertionError("the answers ran out")


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_native_write_stopped_after_every_chunk_lands_the_bytes_of_one_write(
    s3: S3Client, bucket: str, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given chunks of S3's least size, and the object one write stores
    monkeypatch.setattr(results, "MULTIPART_CHUNK_BYTES", CHUNK)
    output = OutputSpec(format="native", compression=compression)  # type: ignore[arg-type]
    one = writer(s3, bucket).write("one/", native_answer(), output)
    assert one.finished
    # When every write stops after its first chunk, and the next reads the answer again (in other
    # pieces) and goes on
    written, fetches = write_native_in_fetches(
        writer(s3, bucket), (native_answer(seed=seed) for seed in range(1, 10)), output
    )
    # Then four writes stored the very object one write stores: bytes, sha256, size, rows
    assert fetches == 4
    assert [entry.key for entry in written.objects] == [PREFIX + one.objects[0].key.removeprefix("one/")]
    assert stored_bytes(s3, bucket, written.objects[0].key) == stored_bytes(s3, bucket, one.objects[0].key)
    assert content_of(s3, bucket, written.objects[0].key) == NATIVE_BODY
    assert written.objects[0].model_copy(update={"key": ""}) == one.objects[0].model_copy(update={"key": ""})
    assert written.row_count == len(NATIVE_BODY) // 1000
    assert_objects_match_what_is_stored(s3, bucket, written)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize(
    "body_read_again",
    [NATIVE_BODY[:100] + b"?" + NATIVE_BODY[101:], NATIVE_BODY[:CHUNK], NATIVE_BODY[: CHUNK - 1]],
    ids=["one byte differs", "ends where the landed bytes end", "shorter than the landed bytes"],
)
def test_a_native_answer_read_again_that_is_not_the_same_is_an_upstream_protocol_error(
    s3: S3Client, bucket: str, body_read_again: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a write that stopped after its first chunk
    monkeypatch.setattr(results, "MULTIPART_CHUNK_BYTES", CHUNK)
    first = writer(s3, bucket).write(PREFIX, native_answer(), OutputSpec(format="native"), stop=lambda: True)
    assert first.upload is not None
    landed = Landed(objects=[], rows=0, upload=first.upload)
    # When the answer read again is not the one it read / Then the next write refuses to go on
    with pytest.raises(UpstreamProtocolError, match="earlier Fetch"):
        writer(s3, bucket).write(
            PREFIX, native_answer(body_read_again), OutputSpec(format="native"), landed=landed
        )


def test_a_native_upload_that_is_gone_starts_the_object_again(
    s3: S3Client, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a write that stopped after its first chunk, whose upload was then aborted
    monkeypatch.setattr(results, "MULTIPART_CHUNK_BYTES", CHUNK)
    first = writer(s3, bucket).write(PREFIX, native_answer(), OutputSpec(format="native"), stop=lambda: True)
    assert first.upload is not None
    s3.abort_multipart_upload(Bucket=bucket, Key=first.upload.key, UploadId=first.upload.upload_id)
    # When the next write goes on from it
    landed = Landed(objects=[], rows=0, upload=first.upload)
    written = writer(s3, bucket).write(
        PREFIX, native_answer(seed=1), OutputSpec(format="native"), landed=landed
    )
    # Then it wrote the whole object again
    assert written.finished
    assert content_of(s3, bucket, written.objects[0].key) == NATIVE_BODY
    assert_objects_match_what_is_stored(s3, bucket, written)


def test_a_native_write_going_on_keeps_its_upload_and_aborts_the_others(
    s3: S3Client, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a write that stopped after its first chunk, and another upload left under the prefix
    monkeypatch.setattr(results, "MULTIPART_CHUNK_BYTES", CHUNK)
    first = writer(s3, bucket).write(PREFIX, native_answer(), OutputSpec(format="native"), stop=lambda: True)
    assert first.upload is not None
    s3.create_multipart_upload(Bucket=bucket, Key=PREFIX + "part-00000.jsonl")
    # When the next write goes on from it
    landed = Landed(objects=[], rows=0, upload=first.upload)
    second = writer(s3, bucket).write(
        PREFIX, native_answer(), OutputSpec(format="native"), landed=landed, stop=lambda: True
    )
    # Then only its own upload is left, one chunk further
    assert second.upload is not None
    assert (
        second.upload.model_copy(update={"parts": 1, "bytes": CHUNK, "sha256": first.upload.sha256})
        == first.upload
    )
    assert [
        (upload["Key"], upload["UploadId"]) for upload in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    ] == [(first.upload.key, first.upload.upload_id)]
