"""A hostile upstream for tests: it answers every request from a script, over real HTTP.

``routes`` maps (method, path prefix) to an ``Answer`` (or a list of them, given in turn, the
last one repeated): a status and a body (bytes, or any value sent as JSON), optionally trickled:
the status line and headers (``trickle="head"``) or the body (``trickle="body"``) sent
``trickle_bytes`` at a time, ``trickle_seconds`` apart. A trickled answer is what a per-read
timeout cannot catch: every read gets a byte in time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import pytest


@dataclass
class Answer:
    status: int
    body: Any
    trickle: Literal["head", "body"] | None = None
    trickle_seconds: float = 0.2
    trickle_bytes: int = 1

    def data(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


Scripted = Answer | tuple[int, Any]


class Hostile:
    """An upstream that answers every request from a script: (method, path prefix) -> answer, an
    ``Answer`` or a (status, body) pair."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Scripted | list[Scripted]] = {}
        self.requests: list[tuple[str, str]] = []
        self._stopping = threading.Event()
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                hostile.requests.append((self.command, self.path))
                answer = hostile.answer_for(self.command, self.path)
                data = answer.data()
                head = (
                    f"HTTP/1.1 {answer.status} Scripted\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
                ).encode()
                self.close_connection = True
                try:
                    self._send(head, trickled=answer.trickle == "head", answer=answer)
                    self._send(data, trickled=answer.trickle == "body", answer=answer)
                except OSError:
                    pass  # the client gave up: what a trickle is for

            def _send(self, data: bytes, *, trickled: bool, answer: Answer) -> None:
                if not trickled:
                    self.wfile.write(data)
                    self.wfile.flush()
                    return
                for start in range(0, len(data), answer.trickle_bytes):
                    if hostile._stopping.is_set():
                        return
                    self.wfile.write(data[start : start + answer.trickle_bytes])
                    self.wfile.flush()
                    time.sleep(answer.trickle_seconds)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer_for(self, method: str, path: str) -> Answer:
        answer = next(
            (
                answer
                for (route_method, prefix), answer in self.routes.items()
                if route_method == method and path.startswith(prefix)
            ),
            (404, {"message": "no route"}),
        )
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        return answer if isinstance(answer, Answer) else Answer(*answer)

    def close(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()
