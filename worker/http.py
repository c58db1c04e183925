"""A minimal HTTP server for `/healthz`, `/readyz` and `/metrics` (no framework needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger(__name__)

ReadyCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else the reason it is not."""


class HealthServer:
    """Serves the three endpoints on `port` (0 picks a free one; see `.port`)."""

    def __init__(self, port: int, registry: CollectorRegistry, ready: ReadyCheck) -> None:
        self._port = port
        self._registry = registry
        self._ready = ready
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port actually bound."""
        assert self._server is not None  # noqa: S101 - only asked after start()
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen on all interfaces (the container's health check and Prometheus need it)."""
        self._server = await asyncio.start_server(self._handle, "0.0.0.0", self._port)  # noqa: S104
        log.info("http_listening", port=self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, content_type, body = await self._route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    async def _route(self, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path == "/healthz":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            reason = await self._ready()
            if reason is None:
                return "200 OK", text, b"ready\n"
            return "503 Service Unavailable", text, f"not ready: {reason}\n".encode()
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return "404 Not Found", text, b"not found\n"
