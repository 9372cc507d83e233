"""Every provider passes the same tests against its emulator over real HTTP."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import moto.s3.models
import pyarrow.parquet as pq
import pytest

from query_relay import results
from query_relay.column_types import arrow_schema, kind_of
from query_relay.exceptions import (
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.models import OutputSpec, parse_connection
from query_relay.providers import (
    FetchedResult,
    NativeResult,
    Provider,
    SubmitOptions,
    TabularResult,
    open_provider,
    validate_query,
)
from query_relay.results import Landed, ResultWriter, WrittenResult
from tests.moto_server import moto_client
from tests.parquet_rule import expected as parquet_value

from .harnesses import ProviderHarness
from .registry import HARNESSES

pytestmark = pytest.mark.parametrize("harness", HARNESSES, ids=repr)

SLOW_SECONDS = 1.5


@pytest.fixture
def emulator(harness: ProviderHarness) -> Iterator[Any]:
    with harness.emulator() as started:
        yield started


def provider_for(harness: ProviderHarness, emulator: Any, *, valid: bool = True) -> Provider[Any, Any]:
    return open_provider(
        "conformance", parse_connection("conformance", harness.connection(emulator, valid=valid))
    )


def options(wait_seconds: float, output_format: str = "jsonl") -> SubmitOptions:
    return SubmitOptions(output_format=output_format, wait_seconds=wait_seconds, timeout_seconds=600)  # type: ignore[arg-type]


def rows_of(result: FetchedResult) -> list[dict[str, Any]] | int:
    """Tabular results as row dicts; native results as their row count (their bytes are the upstream's)."""
    if isinstance(result, TabularResult):
        names = [column.name for column in result.columns]
        return [dict(zip(names, row, strict=True)) for row in result.rows]
    assert isinstance(result, NativeResult)
    for _ in result.chunks:
        pass
    return result.row_count


def submit_running(
    harness: ProviderHarness, emulator: Any, provider: Provider[Any, Any], query: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Submit a query that outlasts the submit wait: its upstream id and provider state."""
    harness.set_query_seconds(emulator, SLOW_SECONDS)
    with provider.submit(validate_query(harness.provider, query), options(0)) as submission:
        assert not submission.finished
        assert submission.upstream_id
        return submission.upstream_id, submission.state


def poll_until_finished(
    provider: Provider[Any, Any], upstream_id: str, state: dict[str, Any], timeout: float = 30
) -> dict[str, Any]:
    """Poll like the state machine does (carrying the provider state); the state once finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = provider.poll(upstream_id, state, 1.0)
        if status.state is not None:
            state = status.state
        if status.finished:
            return state
        time.sleep(0.2)
    raise AssertionError(f"{upstream_id} not finished after {timeout}s")


@pytest.mark.parametrize("output_format", ["jsonl", "csv", "native"])
def test_submit_poll_fetch_gives_the_upstream_rows(
    harness: ProviderHarness, emulator: Any, output_format: str
) -> None:
    # Given a query that outlasts the submit wait
    expected = harness.expected_rows(emulator)
    provider = provider_for(harness, emulator)
    upstream_id, state = submit_running(harness, emulator, provider, harness.ok_query)
    # When it is polled until finished and fetched
    state = poll_until_finished(provider, upstream_id, state)
    with provider.fetch(upstream_id, state, output_format) as result:  # type: ignore[arg-type]
        got = rows_of(result)
    # Then the rows are exactly the upstream's (native: the same number of rows)
    assert got == (len(expected) if isinstance(got, int) else expected)
    assert len(expected) >= 2


@pytest.mark.parametrize("output_format", ["jsonl", "native"])
def test_a_split_result_read_a_range_of_pieces_at_a_time_is_the_whole_result(
    harness: ProviderHarness, emulator: Any, output_format: str
) -> None:
    provider = provider_for(harness, emulator)
    if provider.splits_results:
        harness.split_results(emulator, 2)  # pieces of 2 rows
    expected = harness.expected_rows(emulator)
    upstream_id, state = submit_running(harness, emulator, provider, harness.ok_query)
    state = poll_until_finished(provider, upstream_id, state)
    # When the whole result is opened, its pieces are known before a row is read
    with provider.fetch(upstream_id, state, output_format) as whole:  # type: ignore[arg-type]
        pieces = whole.pieces
    if not provider.splits_results:
        # An upstream that does not split results reads them in one Fetch: no pieces, no ranges
        assert pieces is None
        with pytest.raises(TypeError), provider.fetch(upstream_id, state, "jsonl", pieces=range(1)):
            pass
        return
    assert pieces is not None
    count = len(pieces)
    assert count >= 3
    assert sum(piece.rows or 0 for piece in pieces) == len(expected)
    # and read as three ranges (the first piece, the middle ones, the last)
    ranges = [range(1), range(1, count - 1), range(count - 1, count)]
    read: list[Any] = []
    for wanted in ranges:
        with provider.fetch(upstream_id, state, output_format, pieces=wanted) as result:  # type: ignore[arg-type]
            got = rows_of(result)
        held = sum(piece.rows or 0 for piece in pieces[wanted.start : wanted.stop])
        assert (got if isinstance(got, int) else len(got)) == held  # each range holds its pieces' rows
        read.append(got)
    # Then the ranges hold the whole result, in order
    if output_format == "native":
        assert sum(read) == len(expected)
    else:
        assert [row for rows in read for row in rows] == expected
    # and a range beyond the result's pieces is refused
    with (
        pytest.raises(UpstreamProtocolError),
        provider.fetch(upstream_id, state, "jsonl", pieces=range(count - 1, count + 1)),
    ):
        pass


def test_a_quick_query_finishes_inside_the_submit_wait(harness: ProviderHarness, emulator: Any) -> None:
    provider = provider_for(harness, emulator)
    harness.set_query_seconds(emulator, 0)
    with provider.submit(validate_query(harness.provider, harness.ok_query), options(10)) as submission:
        assert submission.finished
        if submission.result is not None:  # the upstream handed the result over at once
            assert rows_of(submission.result) == harness.expected_rows(emulator)
            return
        upstream_id, state = submission.upstream_id, submission.state
    assert upstream_id
    assert provider.poll(upstream_id, state, 0).finished


def test_cancel_stops_a_running_task_or_is_documented_as_impossible(
    harness: ProviderHarness, emulator: Any
) -> None:
    provider = provider_for(harness, emulator)
    upstream_id, state = submit_running(harness, emulator, provider, harness.ok_query)
    if harness.cancelled_state is None:
        assert not provider.can_cancel
        return
    assert provider.can_cancel
    assert provider.cancel(upstream_id, state) is True
    assert harness.task_state(emulator, upstream_id) == harness.cancelled_state
    # cancelling again (already gone) is not an error
    assert provider.cancel(upstream_id, state) is False


def test_wrong_credentials_are_upstream_auth_failed(harness: ProviderHarness, emulator: Any) -> None:
    provider = provider_for(harness, emulator, valid=False)
    with (
        pytest.raises(UpstreamAuthFailed) as raised,
        provider.submit(validate_query(harness.provider, harness.ok_query), options(1)),
    ):
        pass
    assert "not-the-key" not in str(raised.value)


def test_an_unknown_task_is_upstream_task_expired(harness: ProviderHarness, emulator: Any) -> None:
    provider = provider_for(harness, emulator)
    with pytest.raises(UpstreamTaskExpired):
        provider.poll(harness.unknown_task_id, {}, 0)


def test_a_query_the_upstream_rejects_is_upstream_query_failed(
    harness: ProviderHarness, emulator: Any
) -> None:
    def submit_and_follow(provider: Provider[Any, Any], query: dict[str, Any]) -> None:
        with provider.submit(validate_query(harness.provider, query), options(5)) as submission:
            upstream_id, state = submission.upstream_id, submission.state
        # Some upstreams accept the task and report the failure when it is polled.
        assert upstream_id
        poll_until_finished(provider, upstream_id, state)

    harness.set_query_seconds(emulator, 0)
    with pytest.raises(UpstreamQueryFailed):
        submit_and_follow(provider_for(harness, emulator), harness.failing_query)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_upstream_unavailable(harness: ProviderHarness, emulator: Any, status: int) -> None:
    provider = provider_for(harness, emulator)
    harness.fail_next(emulator, "submit", status)
    with (
        pytest.raises(UpstreamUnavailable),
        provider.submit(validate_query(harness.provider, harness.ok_query), options(1)),
    ):
        pass
    upstream_id, state = submit_running(harness, emulator, provider, harness.ok_query)
    harness.fail_next(emulator, "poll", status)
    with pytest.raises(UpstreamUnavailable):
        provider.poll(upstream_id, state, 0)


def test_rate_limits_carry_the_retry_after(harness: ProviderHarness, emulator: Any) -> None:
    provider = provider_for(harness, emulator)
    harness.fail_next(emulator, "submit", 429, retry_after=7)
    with (
        pytest.raises(UpstreamRateLimited) as raised,
        provider.submit(validate_query(harness.provider, harness.ok_query), options(1)),
    ):
        pass
    assert raised.value.retry_after_seconds == 7
    # A poll that is rate limited asks the state machine to wait instead of failing.
    upstream_id, state = submit_running(harness, emulator, provider, harness.ok_query)
    harness.fail_next(emulator, "poll", 429, retry_after=9)
    status = provider.poll(upstream_id, state, 0)
    assert (status.finished, status.retry_after_seconds) == (False, 9)


# --- a Fetch that stops early and the next that goes on --------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    with moto_client("s3") as client:
        client.create_bucket(Bucket=RESUME_BUCKET)
        yield client


RESUME_BUCKET = "conformance-results"


def stored(s3: Any, written: WrittenResult, prefix: str) -> list[tuple[str, int, str, bytes]]:
    """Each object's key (under ``prefix``), rows, sha256 and bytes, in order."""
    return [
        (
            entry.key.removeprefix(prefix),
            entry.rows,
            entry.sha256,
            s3.get_object(Bucket=RESUME_BUCKET, Key=entry.key)["Body"].read(),
        )
        for entry in written.objects
    ]


@pytest.mark.parametrize("output", ["jsonl", "jsonl.gz", "csv", "csv.gz", "native", "native.gz", "parquet"])
def test_a_fetch_stopped_after_every_part_lands_the_bytes_of_one_fetch(
    harness: ProviderHarness, emulator: Any, s3: Any, output: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a finished query, and parts of rows (or multipart chunks of a native object) of about a
    # quarter of its bytes
    provider = provider_for(harness, emulator)
    upstream_id, state = submit_running(harness, emulator, provider, harness.ok_query)
    state = poll_until_finished(provider, upstream_id, state)
    output_format, _, gz = output.partition(".")
    spec = OutputSpec(format=output_format, compression="gzip" if gz else "none")  # type: ignore[arg-type]
    native = spec.format == "native"
    probe = f"{harness.provider}/{output}/probe/"
    with provider.fetch(upstream_id, state, spec.format) as result:
        plain = ResultWriter(s3, RESUME_BUCKET, part_max_bytes=2**40)
        plain_spec = spec if native else OutputSpec(format=spec.format, compression="none")
        probed = plain.write(probe, result, plain_spec, provider=harness.provider)
    size = probed.byte_count
    if spec.format == "parquet":  # its parts roll by their Arrow data, not their stored bytes
        body = s3.get_object(Bucket=RESUME_BUCKET, Key=probed.objects[0].key)["Body"].read()
        size = pq.read_table(io.BytesIO(body)).nbytes
    writer = ResultWriter(s3, RESUME_BUCKET, part_max_bytes=size // 4 + 1)
    if native:
        # These answers are far below S3's 5 MiB least chunk: this S3 takes smaller ones here.
        monkeypatch.setattr(results, "MULTIPART_CHUNK_BYTES", size // 4 + 1)
        monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1)
    one, many = f"{harness.provider}/{output}/one/", f"{harness.provider}/{output}/many/"
    with provider.fetch(upstream_id, state, spec.format) as result:
        whole = writer.write(one, result, spec, provider=harness.provider)
    # When every Fetch stops after its first part, and the next reads the answer again and goes on
    landed: Landed | None = None
    fetches = 0
    while True:
        with provider.fetch(upstream_id, state, spec.format) as result:
            written = writer.write(
                many, result, spec, landed=landed, stop=lambda: True, provider=harness.provider
            )
        fetches += 1
        if written.finished:
            break
        if native:
            assert written.upload is not None
            assert (written.objects, written.upload.parts) == ([], fetches)
        else:
            assert len(written.objects) == fetches
        landed = Landed(objects=written.objects, rows=written.row_count, upload=written.upload)
    # Then one Fetch per part landed exactly the objects one Fetch lands
    assert fetches == (4 if native else len(whole.objects)) >= 3
    assert stored(s3, written, many) == stored(s3, whole, one)
    assert (written.row_count, written.byte_count) == (whole.row_count, whole.byte_count)
    assert s3.list_multipart_uploads(Bucket=RESUME_BUCKET, Prefix=many).get("Uploads", []) == []


def test_a_parquet_result_reads_back_with_the_documented_types_and_the_exact_rows(
    harness: ProviderHarness, emulator: Any, s3: Any
) -> None:
    # Given a finished query
    provider = provider_for(harness, emulator)
    upstream_id, state = submit_running(harness, emulator, provider, harness.ok_query)
    state = poll_until_finished(provider, upstream_id, state)
    # When its result is written as Parquet
    prefix = f"{harness.provider}/parquet/"
    spec = OutputSpec.model_validate({"format": "parquet"})
    with provider.fetch(upstream_id, state, spec.format) as result:
        columns = list(result.columns)
        writer = ResultWriter(s3, RESUME_BUCKET, part_max_bytes=2**30)
        written = writer.write(prefix, result, spec, provider=harness.provider)
    # Then pyarrow reads every column as its documented type, and every row as the jsonl row
    # holds it, by the README's rule
    (part,) = [
        pq.ParquetFile(io.BytesIO(s3.get_object(Bucket=RESUME_BUCKET, Key=entry.key)["Body"].read()))
        for entry in written.objects
    ]
    kinds = {column.name: kind_of(harness.provider, column) for column in columns}
    assert [(field.name, str(field.type)) for field in part.schema_arrow] == [
        (column.name, column.type) for column in arrow_schema(harness.provider, columns)
    ]
    assert {kind.name for kind in kinds.values()} - {"string"}, "the result holds a typed column"
    expected = [
        {name: parquet_value(kinds[name], value) for name, value in row.items()}
        for row in harness.expected_rows(emulator)
    ]
    assert part.read().to_pylist() == expected
    assert written.row_count == len(expected) > 0
