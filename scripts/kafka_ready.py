#!/usr/bin/env python3
"""Exit 0 when the Kafka broker at HOST:PORT answers a Metadata request with brokers.

Standard library only, so `make services` can use it before any virtual environment
exists. Sends Metadata v4 (non-flexible; served by Kafka 2.x through 4.x) for all topics.
"""

import socket
import struct
import sys


def metadata_answers(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when the broker replies to Metadata v4 with at least one broker."""
    client_id = b"signal-worker-ready"
    correlation_id = 7
    header = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    body = struct.pack(">ib", -1, 0)  # all topics, no auto-creation
    request = header + body
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _read(sock, 4))[0]
        payload = _read(sock, size)
    got_correlation, _throttle, broker_count = struct.unpack(">iii", payload[:12])
    return got_correlation == correlation_id and broker_count > 0


def _read(sock: socket.socket, n: int) -> bytes:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return chunks


def main() -> int:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
    host, _, port = target.rpartition(":")
    try:
        return 0 if metadata_answers(host, int(port)) else 1
    except (OSError, struct.error, ValueError) as exc:
        print(f"kafka not ready at {target}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
