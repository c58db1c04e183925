"""A minimal HTTP server for `/healthz`, `/readyz` and `/metrics` (no framework needed).

It faces probes and scrapers, but also whatever else can reach the port, so it is strict:

- one request per connection (`Connection: close`); the whole request head must arrive
  within `HTTP_REQUEST_TIMEOUT_S` (a client that trickles a header line every few seconds
  is cut off, not waited for);
- at most `HTTP_MAX_CONNECTIONS` connections at once: beyond that a connection is closed
  at once, unanswered, so a flood cannot hold the worker's file descriptors or its time;
- `GET` and `HEAD` only (`405` with `Allow` otherwise); a request line over
  `MAX_LINE_BYTES` is `400`, a header line over it, more than `MAX_HEADERS` header lines or
  a head over `MAX_HEAD_BYTES` is `431`; nothing a client sends reaches the log as a
  traceback;
- it listens on `HTTP_HOST` (default all interfaces, which container probes need).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger(__name__)

ReadyCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else the reason it is not."""

MAX_LINE_BYTES = 8 * 1024
MAX_HEADERS = 100
MAX_HEAD_BYTES = 64 * 1024
_TEXT = "text/plain; charset=utf-8"


class _BadRequest(Exception):  # noqa: N818 - an HTTP status, raised only inside this module
    def __init__(self, status: str, body: str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class HealthServer:
    """Serves the three endpoints on `host`:`port` (port 0 picks a free one; see `.port`)."""

    def __init__(
        self,
        port: int,
        registry: CollectorRegistry,
        ready: ReadyCheck,
        *,
        host: str = "0.0.0.0",  # noqa: S104 - the container's health check needs it
        max_connections: int = 64,
        request_timeout_s: float = 5.0,
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._ready = ready
        self._max_connections = max_connections
        self._request_timeout_s = request_timeout_s
        self._open = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port actually bound."""
        assert self._server is not None  # noqa: S101 - only asked after start()
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen on `host`:`port`."""
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, limit=MAX_LINE_BYTES
        )
        log.info("http_listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > self._max_connections:
                return  # closed unanswered (an answer would race the unread request: RST)
            try:
                async with asyncio.timeout(self._request_timeout_s):
                    method, path = await _read_head(reader)
            except _BadRequest as bad:
                await self._respond(writer, bad.status, _TEXT, bad.body.encode(), True)
                return
            except (TimeoutError, asyncio.IncompleteReadError):
                return  # too slow, or gone before finishing its request: nothing to answer
            if method not in ("GET", "HEAD"):
                await self._respond(
                    writer, "405 Method Not Allowed", _TEXT, b"only GET and HEAD\n", True,
                    extra="Allow: GET, HEAD\r\n",
                )  # fmt: skip
                return
            status, content_type, body = await self._route(path)
            await self._respond(writer, status, content_type, body, method == "GET")
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), timeout=1)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: str,
        content_type: str,
        body: bytes,
        with_body: bool,
        *,
        extra: str = "",
    ) -> None:
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + (body if with_body else b""))
        async with asyncio.timeout(self._request_timeout_s):
            await writer.drain()

    async def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/healthz":
            return "200 OK", _TEXT, b"ok\n"
        if path == "/readyz":
            reason = await self._ready()
            if reason is None:
                return "200 OK", _TEXT, b"ready\n"
            return "503 Service Unavailable", _TEXT, f"not ready: {reason}\n".encode()
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return "404 Not Found", _TEXT, b"not found\n"


async def _read_line(reader: asyncio.StreamReader, too_long: _BadRequest) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise too_long from None


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and path of the request; the rest of its head is read and dropped."""
    request = await _read_line(reader, _BadRequest("400 Bad Request", "request line too long\n"))
    parts = request.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest("400 Bad Request", "not an HTTP/1.x request line\n")
    total, count = len(request), 0
    too_large = _BadRequest("431 Request Header Fields Too Large", "request head too large\n")
    while (line := await _read_line(reader, too_large)) not in (b"\r\n", b"\n"):
        total, count = total + len(line), count + 1
        if count > MAX_HEADERS or total > MAX_HEAD_BYTES:
            raise too_large
    return parts[0], parts[1].split("?", 1)[0]
