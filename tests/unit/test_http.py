"""The health server facing whatever can reach its port: slow clients, floods, odd methods,
oversized lines. Real sockets on 127.0.0.1, no framework."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from worker.runtime.http import MAX_HEADERS, MAX_LINE_BYTES, HealthServer


async def _ready() -> str | None:
    return None


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    health = HealthServer(
        0,
        CollectorRegistry(),
        _ready,
        host="127.0.0.1",
        max_connections=3,
        request_timeout_s=0.5,
    )
    await health.start()
    yield health
    await health.stop()


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_get_and_head_answer_and_head_has_no_body(server: HealthServer) -> None:
    got = await _exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(got) == 200
    assert got.endswith(b"\r\n\r\nok\n")
    head = await _exchange(server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(head) == 200
    assert b"Content-Length: 3\r\n" in head
    assert head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"get", b"TRACE"])
async def test_other_methods_get_405_with_allow(server: HealthServer, method: bytes) -> None:
    got = await _exchange(server.port, method + b" /healthz HTTP/1.1\r\n\r\n")
    assert _status(got) == 405
    assert b"Allow: GET, HEAD\r\n" in got


async def test_an_oversized_request_line_is_400_and_an_oversized_header_431(
    server: HealthServer,
) -> None:
    long_path = b"/" + b"a" * (MAX_LINE_BYTES + 10)
    got = await _exchange(server.port, b"GET " + long_path + b" HTTP/1.1\r\n\r\n")
    assert _status(got) == 400
    long_header = b"X-Big: " + b"b" * (MAX_LINE_BYTES + 10) + b"\r\n"
    got = await _exchange(server.port, b"GET /healthz HTTP/1.1\r\n" + long_header + b"\r\n")
    assert _status(got) == 431
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
    got = await _exchange(server.port, b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n")
    assert _status(got) == 431
    # Still serving afterwards.
    assert _status(await _exchange(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")) == 200


async def test_garbage_is_400_not_a_traceback(server: HealthServer) -> None:
    got = await _exchange(server.port, b"\x00\x01\x02 hello\r\n\r\n")
    assert _status(got) == 400


async def test_a_client_trickling_headers_is_cut_off_at_the_request_deadline(
    server: HealthServer,
) -> None:
    """One header line every 0.1 s, each in time on its own, 40 of them (4 s): the server's
    0.5 s deadline for the whole head closes the connection long before the trickle ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    sent = 0
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        for i in range(40):
            await asyncio.sleep(0.1)
            if reader.at_eof():
                break
            try:
                writer.write(b"X-%d: 1\r\n" % i)
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(1), timeout=0.001)
    finally:
        writer.close()
    assert sent < 40  # cut off mid-trickle, unanswered


async def test_connections_beyond_the_cap_are_closed_at_once(server: HealthServer) -> None:
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
    try:
        await asyncio.sleep(0.05)  # let the server accept them
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            got = await asyncio.wait_for(reader.read(), timeout=5)
        except ConnectionResetError:
            got = b""
        finally:
            writer.close()
        assert got == b""  # closed unanswered
        # ... at once: the held connections, idle, are still open (their deadline not yet up).
        assert not any(r.at_eof() for r, _ in held)
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.6)  # the held ones time out and free their slots
    assert _status(await _exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")) == 200


async def test_unknown_paths_are_404(server: HealthServer) -> None:
    assert _status(await _exchange(server.port, b"GET /nope HTTP/1.1\r\n\r\n")) == 404
