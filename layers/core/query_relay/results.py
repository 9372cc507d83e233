"""Streams a provider's result into S3 parts and writes the manifest (docs/contracts.md,
"S3 output and the manifest").

    s3://<bucket>/<prefix>dt=YYYY-MM-DD/<job_id>/part-00000.jsonl[.gz]
                                            .../part-00001.jsonl[.gz]
                                            .../_manifest.json        (written last)

Memory stays bounded whatever the result size: rows are encoded in small batches on demand while
boto3's managed transfer pulls a part through a file-like object and uploads it in multipart
chunks, a few at a time. What is hashed and counted is exactly what is stored (the gzip bytes
when compressed), so consumers can check the manifest's sha256 against the objects they download.
"""

from __future__ import annotations

import base64
import contextvars
import csv
import dataclasses
import hashlib
import io
import json
import math
import mimetypes
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, islice, repeat
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from pydantic import BaseModel, ConfigDict

from query_relay import column_types
from query_relay.column_types import Kind
from query_relay.exceptions import UpstreamProtocolError
from query_relay.json_rule import encode_json, json_bytes
from query_relay.models import Column, Manifest, NativeUpload, ObjectEntry, OutputSpec, ProviderName
from query_relay.observability import logger
from query_relay.providers.base import FetchedResult, NativeResult, TabularResult

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, PartTypeDef
    from s3transfer.manager import TransferManager

MANIFEST_NAME = "_manifest.json"

# A multipart chunk is read into memory before it is uploaded; these bound a part's footprint to
# about (in-memory chunks + 2) x chunk size however large the part is: measured ~65 MB peak RSS
# growth for 100 MB and 500 MB parts alike, where the defaults (10 chunks, 10 threads) take ~110 MB.
MULTIPART_CHUNK_BYTES = 8 * 1024 * 1024
_UPLOAD_CONCURRENCY = 3
_IN_MEMORY_UPLOAD_CHUNKS = 3
# Rows are encoded and compressed this many bytes at a time: large enough to amortise the calls,
# small enough to stay far below a chunk.
_ENCODE_BATCH_BYTES = 128 * 1024
# Throughput over ratio: at level 1 gzip keeps pace with the network (~300 MB/s a core on JSON
# text) while the default level 6 halves that for objects only ~20% smaller.
_GZIP_LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip container; mtime 0, so a re-run stores identical bytes
_S3_DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
_RECORD_READERS = 8  # a parallel fetch's branch records read at once by its manifest step

_CONTENT_TYPES = {
    "jsonl": "application/x-ndjson",
    "ndjson": "application/x-ndjson",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
# Only the built-in table: the host's /etc/mime.types must not change what we store.
_BUILTIN_MIME_TYPES = mimetypes.MimeTypes()


def job_prefix(output: OutputSpec, job_id: str, submitted_at: datetime) -> str:
    """The key prefix every object of one job lives under; the date is the submission's UTC day."""
    return f"{output.prefix}dt={job_day(submitted_at)}/{job_id}/"


def job_day(submitted_at: datetime) -> str:
    """The job's ``dt``: the UTC day it was submitted (a naive time is UTC)."""
    if submitted_at.tzinfo is None:
        submitted_at = submitted_at.replace(tzinfo=UTC)
    return f"{submitted_at.astimezone(UTC):%Y-%m-%d}"


@dataclass(frozen=True)
class WrittenResult:
    """The parts written so far (all of them once ``finished``), and the rows they hold."""

    objects: list[ObjectEntry]
    columns: list[Column]
    row_count: int
    byte_count: int
    finished: bool = True
    upload: NativeUpload | None = None  # a native object's upload, when not finished


class BranchLanded(BaseModel):
    """What one branch of a parallel fetch landed: its pieces' parts, in order."""

    model_config = ConfigDict(extra="forbid")

    branch: int
    objects: list[ObjectEntry]
    columns: list[Column]
    partial: bool = False

    @property
    def rows(self) -> int:
        return sum(entry.rows for entry in self.objects)


@dataclass(frozen=True)
class Landed:
    """The parts an earlier Fetch of the same result landed (whole, in order) and the rows they hold:
    ``ResultWriter.write`` skips those rows and goes on with the next part."""

    objects: list[ObjectEntry]
    rows: int
    upload: NativeUpload | None = None  # a native object's unfinished upload (no objects, no rows)


class ObjectsNotDeleted(RuntimeError):
    """S3 refused to delete some objects (DeleteObjects reports these per key, without raising)."""


def upload_config() -> TransferConfig:
    """How every part goes up: in MULTIPART_CHUNK_BYTES chunks, a few at a time (bench/fetch.py
    uploads its S3 sink baseline with it too)."""
    config = TransferConfig(
        multipart_threshold=MULTIPART_CHUNK_BYTES,
        multipart_chunksize=MULTIPART_CHUNK_BYTES,
        max_concurrency=_UPLOAD_CONCURRENCY,
        # The classic manager honours the bounds below; CRT may be picked on some hosts otherwise.
        preferred_transfer_client="classic",
    )
    # Not a constructor argument of boto3's TransferConfig, but read by s3transfer (default 10).
    config.max_in_memory_upload_chunks = _IN_MEMORY_UPLOAD_CHUNKS
    return config


class ResultWriter:
    def __init__(self, s3_client: S3Client, bucket: str, *, part_max_bytes: int) -> None:
        if part_max_bytes < 1:
            raise ValueError("part_max_bytes must be positive")
        self._s3 = s3_client
        self._bucket = bucket
        self._part_max_bytes = part_max_bytes
        self._transfer_config = upload_config()

    @property
    def bucket(self) -> str:
        return self._bucket

    def write(
        self,
        prefix: str,
        result: FetchedResult,
        output: OutputSpec,
        *,
        landed: Landed | None = None,
        stop: Callable[[], bool] | None = None,
        branch: int | None = None,
        provider: ProviderName | None = None,
    ) -> WrittenResult:
        """Write ``result`` as parts under ``prefix``, replacing whatever an earlier run left there,
        or, given what an earlier Fetch ``landed``, going on after it. After each whole part of rows
        that is not the last, ``stop()`` may end the write early (``finished`` False): the next
        Fetch goes on from the parts written so far.

        A ``branch`` of a parallel fetch writes its own parts, ``part-<branch>-<n>``, and touches
        nothing else under ``prefix``: neither the manifest, nor other branches' parts and uploads
        (``split`` and ``finish_split`` deal with those).

        A Parquet part's columns are typed by the ``provider``'s column types
        (``query_relay.column_types``).

        A ``NativeResult`` is stored as the upstream's bytes in one object whatever the format asks
        (the provider chose those bytes for it); rows cannot become native bytes. Its object is one
        multipart upload that ``stop()`` may leave unfinished after any of its chunks (``upload``
        says which), and that the next Fetch finishes, given that upload in ``landed``.
        """
        # Read in a copy of this thread's context, whichever thread reads (see _InContext).
        context = contextvars.copy_context()
        if isinstance(result, NativeResult):
            result = dataclasses.replace(result, chunks=_InContext(result.chunks, context))
        kinds = None if provider is None else column_types.kinds_of(provider, list(result.columns))
        return self._write(
            prefix, result, output, context, landed=landed, stop=stop, branch=branch, kinds=kinds
        )

    def _write(
        self,
        prefix: str,
        result: FetchedResult,
        output: OutputSpec,
        context: contextvars.Context,
        *,
        landed: Landed | None,
        stop: Callable[[], bool] | None,
        branch: int | None,
        kinds: list[Kind] | None,
    ) -> WrittenResult:
        if landed is None and branch is None:
            # A consumer must never find a manifest next to parts that are being rewritten.
            self._s3.delete_object(Bucket=self._bucket, Key=prefix + MANIFEST_NAME)
        going_on = None if landed is None else landed.upload
        # An earlier attempt killed mid-upload (a crash, a timeout) ran no abort: its parts' multipart
        # uploads would hold storage until the bucket's lifecycle rule expires them.
        mine = prefix if branch is None else prefix + _part_stem(branch)
        self._abort_multipart_uploads(mine, keep=None if going_on is None else going_on.upload_id)
        name = _PartNames(prefix, branch)
        if isinstance(result, NativeResult):
            if landed is not None and going_on is None:
                raise ValueError("a native result goes on from its unfinished upload, not from parts")
            native = self._write_native(name, result, output, going_on=going_on, stop=stop)
            if isinstance(native, NativeUpload):
                return WrittenResult(
                    objects=[],
                    columns=list(result.columns),
                    row_count=0,
                    byte_count=native.bytes,
                    finished=False,
                    upload=native,
                )
            objects, finished = [native], True
            columns, row_count = result.columns, result.row_count
        else:
            # One transfer manager (one thread pool) for every part: with a pool per part, each
            # part's chunk buffers landed in fresh per-thread malloc arenas and peak RSS grew with the
            # part count (measured: +113 MB for 20 parts of 8 MiB, against +55 MB for one part).
            with create_transfer_manager(self._s3, self._transfer_config) as transfer:
                if output.format == "parquet":
                    if kinds is None:
                        raise ValueError("a Parquet part needs its columns' kinds (the provider's types)")
                    objects, finished = self._write_parquet(
                        name, result, output, transfer, context, kinds=kinds, landed=landed, stop=stop
                    )
                else:
                    objects, finished = self._write_tabular(
                        name, result, output, transfer, context, landed=landed, stop=stop
                    )
            columns, row_count = result.columns, sum(entry.rows for entry in objects)
        if not finished:
            return WrittenResult(
                objects=objects,
                columns=list(columns),
                row_count=row_count,
                byte_count=sum(entry.bytes for entry in objects),
                finished=False,
            )
        if branch is None:
            self._delete_strays(prefix, objects)
        return WrittenResult(
            objects=objects,
            columns=list(columns),
            row_count=row_count,
            byte_count=sum(entry.bytes for entry in objects),
        )

    def write_manifest(self, prefix: str, manifest: Manifest) -> str:
        key = prefix + MANIFEST_NAME
        body = json.dumps(manifest.model_dump(mode="json"), ensure_ascii=False, indent=2).encode()
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="application/json")
        logger.info("manifest written", extra={"key": key, "rows": manifest.row_count})
        return key

    # --- a parallel fetch: branches write parts, one step writes the manifest --------------------

    def split(self, prefix: str) -> None:
        """Before the branches start: no manifest (as ``write`` does), no unfinished upload left."""
        self._s3.delete_object(Bucket=self._bucket, Key=prefix + MANIFEST_NAME)
        self._abort_multipart_uploads(prefix)

    def put_branch(self, prefix: str, landed: BranchLanded) -> None:
        """What a branch landed, kept beside its parts until the manifest is written (a hidden
        ``_branch-<n>.json``: the parts' list would not fit in the state machine's payload)."""
        body = landed.model_dump_json().encode()
        key = prefix + _branch_record_name(landed.branch)
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="application/json")

    def branches(self, prefix: str, count: int) -> list[BranchLanded | None]:
        """What branches 0 .. count-1 landed, in order (None for a branch that left no record);
        read a few at a time (a hundred one after the other would take seconds on S3)."""
        with ThreadPoolExecutor(max_workers=_RECORD_READERS) as pool:
            return list(pool.map(lambda index: self._branch(prefix, index), range(count)))

    def _branch(self, prefix: str, index: int) -> BranchLanded | None:
        try:
            body = self._s3.get_object(Bucket=self._bucket, Key=prefix + _branch_record_name(index))["Body"]
        except self._s3.exceptions.NoSuchKey:
            return None
        return BranchLanded.model_validate_json(body.read())

    def finish_split(self, prefix: str, objects: list[ObjectEntry]) -> None:
        """Once the manifest lists ``objects``: everything else under ``prefix`` goes (the branches'
        records, parts an earlier run left)."""
        self._delete_strays(prefix, objects)

    def discard_branch(self, prefix: str, branch: int) -> int:
        """Delete what one branch wrote (its parts, uploads and record)."""
        stem = prefix + _part_stem(branch)
        self._abort_multipart_uploads(stem)
        keys = [*self._keys_under(stem), prefix + _branch_record_name(branch)]
        self._delete(keys)
        return len(keys) - 1

    def _delete_strays(self, prefix: str, objects: list[ObjectEntry]) -> None:
        keep = {entry.key for entry in objects} | {prefix + MANIFEST_NAME}
        strays = [key for key in self._keys_under(prefix) if key not in keep]
        self._delete(strays)
        if strays:
            logger.info(
                "deleted objects left beside the parts", extra={"prefix": prefix, "count": len(strays)}
            )

    def discard(self, prefix: str) -> int:
        """Delete every object under the job prefix (a failed job) and abort its unfinished uploads."""
        self._abort_multipart_uploads(prefix)
        keys = list(self._keys_under(prefix))
        self._delete(keys)
        logger.info("discarded job objects", extra={"prefix": prefix, "count": len(keys)})
        return len(keys)

    # --- parts -----------------------------------------------------------------------------------

    def _write_tabular(
        self,
        name: _PartNames,
        result: TabularResult,
        output: OutputSpec,
        transfer: TransferManager,
        context: contextvars.Context,
        *,
        landed: Landed | None,
        stop: Callable[[], bool] | None,
    ) -> tuple[list[ObjectEntry], bool]:
        """The parts written (those ``landed`` first), and whether they are all of the result."""
        if output.format == "native":
            raise ValueError("a native output needs the upstream's bytes (a NativeResult), not rows")
        encoder: _RowEncoder = (
            _CsvEncoder(result.columns) if output.format == "csv" else _JsonLinesEncoder(result.columns)
        )
        rows = _RowSource(result.rows, context)
        objects = _going_on(rows, landed)
        # Part 00000 is written even for zero rows: consumers always find at least one object.
        while True:
            tally = _PartTally()
            batches = _encoded_batches(rows, encoder, self._part_max_bytes, tally)
            key = name.key(len(objects), output.format, output.compression)
            stream = _PartStream(batches, gzip=output.compression == "gzip")
            content_type = _CONTENT_TYPES["jsonl"] if output.format == "jsonl" else "text/csv"
            self._upload(transfer, key, stream, content_type)
            objects.append(_object_entry(key, tally.rows, stream))
            if rows.exhausted():
                return objects, True
            if stop is not None and stop():
                return objects, False

    def _write_parquet(
        self,
        name: _PartNames,
        result: TabularResult,
        output: OutputSpec,
        transfer: TransferManager,
        context: contextvars.Context,
        *,
        kinds: list[Kind],
        landed: Landed | None,
        stop: Callable[[], bool] | None,
    ) -> tuple[list[ObjectEntry], bool]:
        """As ``_write_tabular``, in Parquet parts: each is written to a file in /tmp in row groups,
        rolled once it holds ``part_max_bytes`` of Arrow data (or its file PART_FILE_MAX_BYTES),
        then uploaded whole."""
        from query_relay import parquet  # noqa: PLC0415  (pyarrow: loaded by a Parquet job only)

        layout = parquet.Layout(result.columns, kinds)
        rows = _RowSource(result.rows, context)
        objects = _going_on(rows, landed)
        row_number = 1 + (0 if landed is None else landed.rows)
        while True:  # part 00000 is written even for zero rows
            # Every part sizes its batches afresh: its row groups and where it ends depend on its own
            # rows only, so a Fetch that goes on after another lands the bytes one Fetch would.
            count, per_row = 1, 0  # the first row gives the size of the next ones
            part = parquet.PartFile(layout, output.compression)
            try:
                while (
                    (room := self._part_max_bytes - part.data_bytes) > 0
                    and part.file_bytes() < parquet.PART_FILE_MAX_BYTES
                    # no more rows than fill the part or its row group, by the size of rows so far
                    and (batch := rows.take(_rows_for(min(room, part.row_group_room), per_row, count)))
                ):
                    arrow = layout.batch(batch, row_number)
                    part.add(arrow)
                    row_number += len(batch)
                    per_row = max(1, arrow.nbytes // len(batch))
                    count = max(1, min(2 * count, _MAX_PARQUET_BATCH_ROWS, parquet.BATCH_BYTES // per_row))
                stored = part.close()
                key = name.key(len(objects), "parquet", "none")
                transfer.upload(
                    stored.path, self._bucket, key, extra_args={"ContentType": _CONTENT_TYPES["parquet"]}
                ).result()
            finally:
                part.discard()  # the file goes, written or not (/tmp outlives the invocation)
            entry = ObjectEntry(key=key, rows=part.rows, bytes=stored.bytes, sha256=stored.sha256)
            logger.info("result part written", extra={"key": key, "rows": entry.rows, "bytes": entry.bytes})
            objects.append(entry)
            if rows.exhausted():
                return objects, True
            if stop is not None and stop():
                return objects, False

    def _write_native(
        self,
        name: _PartNames,
        result: NativeResult,
        output: OutputSpec,
        *,
        going_on: NativeUpload | None,
        stop: Callable[[], bool] | None,
    ) -> ObjectEntry | NativeUpload:
        """The upstream's bytes as one object: one PutObject when they fit in a chunk, else a
        multipart upload of MULTIPART_CHUNK_BYTES chunks, a few in flight while the next is read.
        After a chunk that is not the last, ``stop()`` may leave the upload unfinished: what is
        returned then is what the next Fetch needs to finish it (``going_on``)."""
        extension = result.extension.lstrip(".")
        key = name.key(0, extension, output.compression)
        stream = _PartStream(result.chunks, gzip=output.compression == "gzip")
        content_type = "application/gzip" if stream.gzipped else _content_type_for(extension)
        first: bytes | None = None
        listed = None if going_on is None or going_on.key != key else self._listed_parts(going_on)
        if going_on is not None and listed is not None:
            parts = self._landed_chunks(going_on, listed, stream)
            upload_id = going_on.upload_id
        else:
            first = stream.read_chunk(MULTIPART_CHUNK_BYTES)
            if stream.at_end():
                self._s3.put_object(Bucket=self._bucket, Key=key, Body=first, ContentType=content_type)
                # The provider counts rows while its chunks are read: ask only once they are exhausted.
                return _object_entry(key, result.row_count, stream)
            upload_id = self._s3.create_multipart_upload(
                Bucket=self._bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="CRC32"
            )["UploadId"]
            parts = []
        try:
            finished = self._upload_chunks(key, upload_id, stream, parts, stop=stop, chunk=first)
            if not finished:
                return NativeUpload(
                    key=key,
                    upload_id=upload_id,
                    parts=len(parts),
                    bytes=stream.stored_bytes,
                    sha256=stream.sha256.hexdigest(),
                )
            self._s3.complete_multipart_upload(
                Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # As s3transfer does: an upload that failed holds no storage (the next Fetch of this
            # job, if any, starts the object again).
            self._s3.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
            raise
        return _object_entry(key, result.row_count, stream)

    def _upload_chunks(
        self,
        key: str,
        upload_id: str,
        stream: _PartStream,
        parts: list[CompletedPartTypeDef],
        *,
        stop: Callable[[], bool] | None,
        chunk: bytes | None,
    ) -> bool:
        """Upload ``chunk`` (if any) and the rest of ``stream`` as the next parts, appended to
        ``parts`` in order; False when ``stop()``, asked after each chunk that is not the last,
        ended it early (every chunk read is uploaded)."""
        finished = True
        with ThreadPoolExecutor(max_workers=_UPLOAD_CONCURRENCY) as pool:
            in_flight: deque[Future[CompletedPartTypeDef]] = deque()
            while chunk is not None or not stream.at_end():
                if chunk is None:
                    chunk = stream.read_chunk(MULTIPART_CHUNK_BYTES)
                if len(in_flight) == _UPLOAD_CONCURRENCY:
                    parts.append(in_flight.popleft().result())
                number = len(parts) + len(in_flight) + 1
                in_flight.append(pool.submit(self._upload_chunk, key, upload_id, number, chunk))
                chunk = None
                if stop is not None and not stream.at_end() and stop():
                    finished = False
                    break
            parts += [future.result() for future in in_flight]
        return finished

    def _upload_chunk(self, key: str, upload_id: str, number: int, chunk: bytes) -> CompletedPartTypeDef:
        response = self._s3.upload_part(
            Bucket=self._bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=chunk,
            ChecksumAlgorithm="CRC32",
        )
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumCRC32": response["ChecksumCRC32"]}

    def _listed_parts(self, going_on: NativeUpload) -> list[PartTypeDef] | None:
        """The parts of an earlier Fetch's unfinished upload; None when it is gone (a Fetch that
        failed aborts its upload, and the bucket's lifecycle rule old ones): the object starts again."""
        listed: list[PartTypeDef] = []
        paginator = self._s3.get_paginator("list_parts")
        try:
            for page in paginator.paginate(
                Bucket=self._bucket, Key=going_on.key, UploadId=going_on.upload_id
            ):
                listed += page.get("Parts", [])
        except self._s3.exceptions.NoSuchUpload:
            logger.warning(
                "the upload an earlier Fetch left is gone: the object starts again",
                extra={"key": going_on.key, "parts": going_on.parts},
            )
            return None
        return listed

    def _landed_chunks(
        self, going_on: NativeUpload, listed: list[PartTypeDef], stream: _PartStream
    ) -> list[CompletedPartTypeDef]:
        """The parts an earlier Fetch uploaded, checked against the answer read again: their bytes are
        read from ``stream`` (hashed, and so counted in the object's sha256) but not uploaded again."""
        parts: list[CompletedPartTypeDef] = []
        for number, part in enumerate(listed[: going_on.parts], start=1):
            if part["PartNumber"] != number:
                break
            chunk = stream.read_chunk(part["Size"])
            parts.append({"PartNumber": number, "ETag": part["ETag"], "ChecksumCRC32": _crc32(chunk)})
        if len(parts) != going_on.parts or stream.stored_bytes != going_on.bytes:
            raise UpstreamProtocolError(
                f"the unfinished upload of {going_on.key} holds {len(parts)} of the {going_on.parts} "
                "parts an earlier Fetch uploaded, or the answer read again is shorter than they are"
            )
        if stream.sha256.hexdigest() != going_on.sha256 or stream.at_end():
            raise UpstreamProtocolError(
                f"the answer read again is not the one an earlier Fetch read: its first "
                f"{going_on.bytes} bytes differ, or it ends there where more was to come"
            )
        return parts

    def _upload(self, transfer: TransferManager, key: str, stream: _PartStream, content_type: str) -> None:
        # No Content-Encoding for gzip: consumers download the .gz as stored and check its sha256.
        stored_type = "application/gzip" if stream.gzipped else content_type
        # On any failure s3transfer aborts the multipart upload it created, then re-raises.
        with io.BufferedReader(stream) as body:
            transfer.upload(body, self._bucket, key, extra_args={"ContentType": stored_type}).result()

    # --- listing and deleting --------------------------------------------------------------------

    def _keys_under(self, prefix: str) -> Iterator[str]:
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _S3_DELETE_BATCH):
            batch = keys[start : start + _S3_DELETE_BATCH]
            response = self._s3.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise ObjectsNotDeleted(
                    f"S3 kept {len(errors)} object(s) under the job prefix, "
                    f"e.g. {first.get('Key')}: {first.get('Code')}"
                )

    def _abort_multipart_uploads(self, prefix: str, *, keep: str | None = None) -> None:
        """Abort the unfinished uploads under ``prefix``, but the one a Fetch goes on with (``keep``)."""
        paginator = self._s3.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                if upload["UploadId"] == keep:
                    continue
                self._s3.abort_multipart_upload(
                    Bucket=self._bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )


@dataclass(frozen=True)
class _PartNames:
    """Part keys: ``part-00000.jsonl`` ..., or a parallel fetch branch's ``part-00003-00000.jsonl``
    ... (branch, then part: the keys sort in result order either way)."""

    prefix: str
    branch: int | None = None

    def key(self, index: int, extension: str, compression: str) -> str:
        suffix = ".gz" if compression == "gzip" else ""
        stem = "part-" if self.branch is None else _part_stem(self.branch)
        return f"{self.prefix}{stem}{index:05d}.{extension}{suffix}"


def _rows_for(room: int, per_row: int, most: int) -> int:
    """How many rows of ``per_row`` bytes (0: not known yet) fill ``room``, at most ``most``."""
    return min(most, -(-room // per_row)) if per_row else most


def _going_on(rows: _RowSource, landed: Landed | None) -> list[ObjectEntry]:
    """The parts an earlier Fetch ``landed``, their rows dropped from ``rows``."""
    if landed is None:
        return []
    skipped = rows.skip(landed.rows)
    if skipped < landed.rows or rows.exhausted():
        # Read again, the answer cannot be the one the earlier Fetch read.
        raise UpstreamProtocolError(
            f"the answer read again has {skipped} rows where the parts already landed hold "
            f"{landed.rows} and more were to come: it is not the answer the earlier Fetch read"
        )
    return list(landed.objects)


def _part_stem(branch: int) -> str:
    return f"part-{branch:05d}-"


def _branch_record_name(branch: int) -> str:
    return f"_branch-{branch:05d}.json"


def _content_type_for(extension: str) -> str:
    known = _CONTENT_TYPES.get(extension.lower())
    if known:
        return known
    guessed, _ = _BUILTIN_MIME_TYPES.guess_type(f"part.{extension}")
    return guessed or "application/octet-stream"


def _object_entry(key: str, rows: int, stream: _PartStream) -> ObjectEntry:
    entry = ObjectEntry(key=key, rows=rows, bytes=stream.stored_bytes, sha256=stream.sha256.hexdigest())
    logger.info("result part written", extra={"key": key, "rows": entry.rows, "bytes": entry.bytes})
    return entry


class _RowSource:
    """A provider's rows, taken a batch at a time; rows taken but not written (those after the row
    that filled a part) are put back for the next part. The provider's iterator is never closed
    here: a streamed answer must outlive the part that dropped its batches. Every batch is read
    inside ``context``, whichever thread takes it (see _InContext: one ``run`` a batch, not a row)."""

    def __init__(self, rows: Iterable[Sequence[Any]], context: contextvars.Context | None = None) -> None:
        self._rows = iter(rows)
        self._put_back: list[Sequence[Any]] = []
        self._context = context or contextvars.copy_context()

    def _read(self, count: int) -> list[Sequence[Any]]:
        return self._context.run(list, islice(self._rows, count))

    def take(self, count: int) -> list[Sequence[Any]]:
        """Up to ``count`` rows (fewer only at the end)."""
        if self._put_back:
            batch, self._put_back = self._put_back[:count], self._put_back[count:]
            if len(batch) < count:
                batch += self._read(count - len(batch))
            return batch
        return self._read(count)

    def skip(self, count: int) -> int:
        """Drop the next ``count`` rows (those an earlier Fetch landed); how many there were."""
        skipped = 0
        while skipped < count and (batch := self.take(min(count - skipped, _SKIP_BATCH_ROWS))):
            skipped += len(batch)
        return skipped

    def put_back(self, rows: list[Sequence[Any]]) -> None:
        self._put_back = rows + self._put_back

    def exhausted(self) -> bool:
        if self._put_back:
            return False
        self._put_back = self._read(1)
        return not self._put_back


# --- encoding rows -------------------------------------------------------------------------------


class _RowEncoder(Protocol):
    def header(self) -> bytes: ...

    def encode(self, rows: Sequence[Sequence[Any]]) -> bytes:
        """The records of ``rows``, in order: the same bytes as encoding each row on its own."""
        ...


def _check_widths(rows: Sequence[Sequence[Any]], width: int) -> None:
    if set(map(len, rows)) - {width}:
        wrong = next(len(row) for row in rows if len(row) != width)
        raise ValueError(f"a row has {wrong} values for {width} columns")


# orjson never writes a control character raw (JSON escapes them in strings), so these two mark
# where the encoder's own fragments of text begin and end in orjson's output.
_BEGIN, _END = b"\x01", b"\x02"


class _JsonLinesEncoder:
    """One JSON object per row, keyed by column name, newline-terminated: exactly what
    ``encode_json(dict(zip(names, row))) + "\\n"`` gives, but a batch in one call of orjson.

    The batch is one flat list, built a column at a time by slice assignment: for each row, a
    fragment of text that opens the object with the first key (or closes the row before and opens
    this one), its first value, a fragment with the next key, the next value, ..., and a last
    fragment that closes the last row. orjson writes the list with a comma between every two items.
    The comma before a next key is the object's own; the one after every key and the one before a
    row's end are not: they are removed with the markers (two C passes over the bytes, the second
    matching once a row). No Python code runs per row or per value."""

    def __init__(self, columns: Sequence[Column]) -> None:
        names = [column.name for column in columns]
        self._width = len(names)
        # As dict(zip(names, row)) has it: a repeated name once, where it first appears, with the
        # value of its last column.
        last_column = {name: index for index, name in enumerate(names)}
        self._columns = list(last_column.values())
        keys = [json_bytes(name) + b":" for name in last_column]
        self._stride = 2 * len(keys)
        # Each fragment is marked where orjson's comma next to it is to go: _END after a key (the
        # value follows), _BEGIN before a row's end (the row's last value precedes).
        self._open = orjson.Fragment(b"{" + keys[0] + _END) if keys else None
        # A row's items but its first fragment, which closes the row before; values are set per batch.
        self._row: list[Any] = []
        for position, key in enumerate(keys):
            text = _BEGIN + b"}\n{" + key + _END if position == 0 else key + _END
            self._row += [orjson.Fragment(text), None]
        self._close = orjson.Fragment(_BEGIN + b"}\n")

    def header(self) -> bytes:
        return b""

    def encode(self, rows: Sequence[Sequence[Any]]) -> bytes:
        _check_widths(rows, self._width)
        if not self._columns or not rows:
            return b"{}\n" * len(rows)
        items = self._row * len(rows)
        items[0] = self._open
        values = list(zip(*rows, strict=True))  # one tuple per column
        for position, column in enumerate(self._columns):
            items[2 * position + 1 :: self._stride] = values[column]
        items.append(self._close)
        text = json_bytes(items)  # [{"a":<E>,1,"b":<E>,2,<B>}\n{"a":<E>,3,...,<B>}\n]
        return text.replace(_END + b",", b"").replace(b"," + _BEGIN, b"")[1:-1]


class _Lines:
    """The file csv.writer writes to: it keeps the records written since the last ``take``."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        self.write = self._texts.append

    def take(self) -> str:
        text = "".join(self._texts)
        self._texts.clear()
        return text


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "replace")  # a lone surrogate (not UTF-8) as "?", by the JSON rule


class _CsvEncoder:
    """A header of column names, then one record per row (RFC 4180 quoting, CRLF line ends)."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self._names = [column.name for column in columns]
        self._lines = _Lines()
        self._writer = csv.writer(self._lines)

    def header(self) -> bytes:
        self._writer.writerow(self._names)
        return _utf8(self._lines.take())

    def encode(self, rows: Sequence[Sequence[Any]]) -> bytes:
        _check_widths(rows, len(self._names))
        if rows and len(self._names) > 1 and (fields := _csv_columns(rows)) is not None:
            pieces: list[Iterable[str]] = []
            for field in fields:
                pieces += (field, repeat(","))
            pieces[-1] = repeat("\r\n")
            # zip(*pieces) gives each record's pieces in order; it ends with the fields.
            return _utf8("".join(chain.from_iterable(zip(*pieces, strict=False))))
        # Most values are written as they are; checking their types in C first saves a call per value.
        kinds = set(map(type, chain.from_iterable(rows)))
        self._writer.writerows(rows if _CSV_AS_IS.issuperset(kinds) else map(_csv_fields, rows))
        text = self._lines.take()
        # csv spells NaN and infinities "nan" and "inf": where the text has neither, no float was one.
        if float in kinds and ("nan" in text or "inf" in text):
            self._writer.writerows([_csv_field(value) for value in row] for row in rows)
            text = self._lines.take()
        return _utf8(text)


# Types csv writes the way the CSV format of this project spells them (bool is not int here).
_CSV_AS_IS = frozenset({str, int, float, type(None)})
_NUMBERS = frozenset({int, float, type(None)})
_BOOLEANS = {True: "true", False: "false", None: ""}
_NONE_AS_EMPTY = {None: ""}
# What makes csv quote a field (QUOTE_MINIMAL: the delimiter, the quote, a line end).
_CSV_SPECIAL = (",", '"', "\r", "\n")


def _csv_columns(rows: Sequence[Sequence[Any]]) -> list[Iterable[str]] | None:
    """Each column's fields spelt as csv.writer spells them, by C functions only (a column of text
    that needs quoting aside), or None when a column holds what only the csv module spells (a
    nested value, a mix of booleans and other types, a NaN): then the batch goes through it. Rows of
    one column are left to it too (it quotes a lone empty field)."""
    fields: list[Iterable[str]] = []
    for column in zip(*rows, strict=True):
        kinds = set(map(type, column))
        if kinds <= _NUMBERS:  # str() is what csv writes; None is an empty field
            texts = list(map(str, map(_NONE_AS_EMPTY.get, column, column)))
            if float in kinds and "n" in "".join(texts):  # nan, inf: the rule makes them empty
                return None
        elif kinds <= {str, type(None)}:
            texts = list(map(_NONE_AS_EMPTY.get, column, column))
            joined = "".join(texts)
            if any(special in joined for special in _CSV_SPECIAL):
                texts = list(map(_csv_quoted, texts))
        elif kinds <= {bool, type(None)}:
            texts = list(map(_BOOLEANS.__getitem__, column))
        else:
            return None
        fields.append(texts)
    return fields


def _csv_quoted(text: str) -> str:
    if any(special in text for special in _CSV_SPECIAL):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_fields(row: Sequence[Any]) -> Sequence[Any]:
    if _CSV_AS_IS.issuperset(map(type, row)):
        return row
    return [value if type(value) in _CSV_AS_IS else _csv_field(value) for value in row]


def _csv_field(value: Any) -> Any:
    """By the JSON rule: None, NaN and infinities become an empty field (csv writes None so);
    booleans and nested values are spelt as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | dict):
        return encode_json(value)
    return value


@dataclass
class _PartTally:
    rows: int = 0
    uncompressed_bytes: int = 0


# Rows are taken and encoded in batches of up to this many (sized to about _ENCODE_BATCH_BYTES from
# the rows seen so far): a batch's rows are in memory at once, as a provider's decoded chunk is.
_FIRST_BATCH_ROWS = 16
_MAX_BATCH_ROWS = 256
_SKIP_BATCH_ROWS = 4096  # rows landed by an earlier Fetch are dropped this many at a time
_MAX_PARQUET_BATCH_ROWS = 65_536  # a Parquet batch is turned into Arrow columns at once


def _encoded_batches(
    rows: _RowSource, encoder: _RowEncoder, part_max_bytes: int, tally: _PartTally
) -> Iterator[bytes]:
    """The encoded bytes of one part, in batches; stops after the row that fills the part, putting
    the rest of the rows taken back for the next part."""
    encode = encoder.encode
    header = encoder.header()
    part_bytes, part_rows = len(header), 0
    if header:
        tally.uncompressed_bytes = part_bytes
        yield header
    count = _FIRST_BATCH_ROWS
    while batch := rows.take(count):
        data = encode(batch)
        if part_bytes + len(data) >= part_max_bytes:
            data, used = _filling(encode, batch, part_max_bytes - part_bytes)
            rows.put_back(batch[used:])
            tally.rows, tally.uncompressed_bytes = part_rows + used, part_bytes + len(data)
            yield data
            return
        part_bytes += len(data)
        part_rows += len(batch)
        tally.rows, tally.uncompressed_bytes = part_rows, part_bytes
        yield data
        # Doubling at most: a run of much larger rows shrinks the next batch at once.
        count = max(1, min(2 * count, _MAX_BATCH_ROWS, _ENCODE_BATCH_BYTES * len(batch) // len(data)))


def _filling(
    encode: Callable[[Sequence[Sequence[Any]]], bytes], batch: list[Sequence[Any]], room: int
) -> tuple[bytes, int]:
    """The records of ``batch`` up to the one that fills ``room`` bytes, and how many they are."""
    records: list[bytes] = []
    size = 0
    for row in batch:
        records.append(encode([row]))
        size += len(records[-1])
        if size >= room:
            break
    return b"".join(records), len(records)


# --- the file-like object s3transfer reads a part from -------------------------------------------


class _PartStream(io.RawIOBase):
    """The stored bytes of one part, produced only as fast as they are read; ``sha256`` and
    ``stored_bytes`` are those of the bytes read so far.

    ``readinto`` fills its whole buffer until the end, so a read of ``n`` bytes (``read_chunk``, or
    s3transfer's through ``io.BufferedReader``) gets exactly ``n`` bytes until the end: S3 rejects
    multipart chunks under 5 MiB other than the last one.
    """

    def __init__(self, chunks: Iterator[bytes], *, gzip: bool) -> None:
        super().__init__()
        self._chunks = chunks
        self._compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS) if gzip else None
        self._pending = bytearray()
        self._exhausted = False
        self.gzipped = gzip
        self.sha256 = hashlib.sha256()
        self.stored_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as view, view.cast("B") as target:
            self._fill(len(target))
            size = min(len(target), len(self._pending))
            with memoryview(self._pending) as pending:  # released before the del below
                target[:size] = pending[:size]
                self._consumed(target[:size])
        # Deleting from the front of a bytearray is cheap in CPython (it moves a start offset).
        del self._pending[:size]
        return size

    def read_chunk(self, size: int) -> bytes:
        """The next ``size`` stored bytes (fewer only at the end), in one copy."""
        self._fill(size)
        with memoryview(self._pending) as pending:
            chunk = bytes(pending[:size])
        self._consumed(chunk)
        del self._pending[: len(chunk)]
        return chunk

    def _fill(self, size: int) -> None:
        while len(self._pending) < size and not self._exhausted:
            self._produce()

    def _consumed(self, data: bytes | memoryview) -> None:
        # What is read is what is stored, in this order: hashing it here hashes the object.
        self.sha256.update(data)
        self.stored_bytes += len(data)

    def at_end(self) -> bool:
        """Whether every stored byte has been read (producing what comes next to know)."""
        while not self._pending and not self._exhausted:
            self._produce()
        return not self._pending

    def _produce(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is None:
            self._exhausted = True
            if self._compressor is not None:
                self._pending += self._compressor.flush()
        elif self._compressor is not None:
            self._pending += self._compressor.compress(chunk)
        else:
            self._pending += chunk


class _InContext[T]:
    """``items``, each produced inside ``context`` whichever thread asks for it (a native
    result's chunks; rows are read a batch at a time by ``_RowSource`` the same way).

    s3transfer reads a part's stream in its own threads, one part in one and the next in another,
    and our own code reads on between parts; a provider's generator opens and closes its
    exchanges (query_relay.upstream.deadline) as it goes, in whatever thread advances it. Every
    thread has its own context: unpinned, an exchange opened while one part was read would be
    reset in another context (ValueError), and no exchange read in s3transfer's threads would see
    the invocation's deadline. Only one thread reads at a time, so the context is never entered
    twice at once."""

    def __init__(self, items: Iterable[T], context: contextvars.Context) -> None:
        self._items = iter(items)
        self._context = context

    def __iter__(self) -> _InContext[T]:
        return self

    def __next__(self) -> T:
        return self._context.run(next, self._items)


def _crc32(data: bytes) -> str:
    """A part's CRC32 as S3 spells it (base64 of the big-endian value)."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
