"""Databricks result chunks and their links (docs/upstreams/databricks.md, "Fetch: the manifest,
chunks and links"): chunk 0's links come with the statement, a later chunk's from ``GET
.../result/chunks/{n}``; each link is a URL on cloud storage, downloaded with exactly its
``http_headers`` and none of our credentials, and renewed by asking for its chunk again when it
expired (by its ``expiration``, or storage's 403).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from query_relay.observability import logger
from query_relay.providers.databricks import answer
from query_relay.upstream.address import upstream_address_policy
from query_relay.upstream.client import UpstreamClient
from query_relay.upstream.errors import Where, raise_for_response, read_error_body
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.stream import StreamedAnswer, small_object

Answer = StreamedAnswer[PathReader]
# A chunk's link that expired (or that storage refuses with 403) is replaced by asking for the
# chunk again, at most this many times a chunk; the last link is tried whatever our clock says.
LINK_RENEWALS = 2

# The provider's request: one streamed exchange (``Provider._request``).
Request = Callable[..., AbstractContextManager[httpx.Response]]


@dataclass
class Tally:
    chunks: int = 0
    rows: int = 0


def links(value: Any, where: Where, index: int) -> dict[int, answer.ExternalLink]:
    """The links an answer hands out (``external_links``), by chunk index; https only in AWS."""
    return answer.links(value, where, index, https_only=not upstream_address_policy().allow_local)


class ChunkReader:
    """The chunks of one finished statement's result, read through the provider's requests."""

    def __init__(
        self,
        request: Request,
        http: UpstreamClient,
        statement: str,
        manifest: answer.Manifest,
        known: dict[int, answer.ExternalLink],
    ) -> None:
        self._request = request
        self._http = http
        self._statement = statement
        self._manifest = manifest
        self._known = known  # links handed out and not used yet, by chunk index

    def pages(self, wanted: range, tally: Tally, *, keep_rows: bool) -> Iterator[Answer]:
        """The ``wanted`` chunks' bodies in order, each yielded open; once the caller has read it,
        its rows are held to the manifest's count (and all of them to its total)."""
        manifest = self._manifest
        for index in wanted:
            with self._download(index, keep_rows=keep_rows) as (page, link):
                yield page
                expected = manifest.chunk_rows(index)
                tally.rows += answer.counted(
                    page.reader, link.row_count if expected is None else expected, index
                )
                tally.chunks += 1
        whole = len(wanted) == manifest.chunk_count
        if whole and manifest.total_row_count is not None and tally.rows != manifest.total_row_count:
            raise self._http.where("databricks fetch").protocol_error(
                f"the chunks hold {tally.rows} rows where the manifest says {manifest.total_row_count}"
            )
        logger.info("databricks result read", extra={"chunks": tally.chunks, "rows": tally.rows})

    @contextmanager
    def _download(self, index: int, *, keep_rows: bool) -> Iterator[tuple[Answer, answer.ExternalLink]]:
        """Chunk ``index``'s body from its link: no Authorization (``auth=None``: storage refuses a
        second credential) and exactly the link's headers. The address policy applies to the link's
        host as to any (query_relay.upstream.address)."""
        where = self._http.where(f"databricks fetch (chunk {index})")
        renewals = 0
        while True:
            link = self._known.pop(index, None)
            if link is None or (renewals < LINK_RENEWALS and link.expired(datetime.now(UTC))):
                if link is not None:  # expired by our clock: replacing it is a renewal
                    renewals += 1
                self._known.update(self._links_for(index, where))
                link = self._known.pop(index, None)
                if link is None:
                    raise where.protocol_error(f"the answer for chunk {index} holds no link to it")
            request: dict[str, Any] = {"headers": link.http_headers, "auth": None, "result": True}
            with self._request("GET", link.external_link, where, check=False, **request) as response:
                if response.status_code == 403 and renewals < LINK_RENEWALS:
                    read_error_body(response)
                    renewals += 1
                    logger.info(
                        "databricks chunk link refused; asking for a fresh one", extra={"chunk": index}
                    )
                    continue
                raise_for_response(
                    response,
                    where,
                    envelope=answer.storage_envelope,
                    classify=answer.classify_download,
                    redact=self._http.redact,
                )
                yield StreamedAnswer(response, answer.chunk_reader(where, keep_rows=keep_rows), where), link
                return

    def _links_for(self, index: int, where: Where) -> dict[int, answer.ExternalLink]:
        path = answer.chunk_path(self._statement, index)
        with self._request("GET", path, where, task_id=self._statement) as response:
            document = small_object(response, where)
        return links(document.get("external_links"), where, index)
