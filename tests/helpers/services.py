"""Where the tests' PostgreSQL and Kafka are: the shared services, and the own ones the
fault tests stop and start."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]


SERVICES_SCRIPT = ROOT / "scripts" / "services.sh"


KAFKA_IMAGE = "apache/kafka:4.4.0"


POSTGRES_IMAGE = "postgres:16"


@dataclass(frozen=True)
class Services:
    """Where the tests' PostgreSQL and Kafka are, and whether the tests may restart them."""

    database_url: str
    kafka_bootstrap: str
    source: str
    restartable: bool

    def with_database(self, name: str) -> str:
        """The DSN of database `name` on the same server."""
        parts = urlsplit(self.database_url)
        return urlunsplit(parts._replace(path=f"/{name}"))


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@dataclass(frozen=True)
class OwnServices:
    """A PostgreSQL and a Kafka of the tests' own that fault tests may stop and start.

    Started by `scripts/services.sh` on other ports and in another folder than the shared
    ones, so stopping them disturbs no other test.
    """

    services: Services
    env: dict[str, str]

    def run(self, *args: str) -> None:
        """`scripts/services.sh ARGS` for these services."""
        subprocess.run([str(SERVICES_SCRIPT), *args], env=self.env, check=True, capture_output=True)

    def stop(self, name: str) -> None:
        """Stop `kafka` or `postgres`."""
        self.run("stop", name)

    def start(self, name: str) -> None:
        """Start `kafka` or `postgres` again (same data)."""
        self.run("start", name)


def own_ports(root: Path = ROOT) -> tuple[int, int, int, int]:
    """Ports of the own services (PostgreSQL, Kafka, its controller, its SASL listener).

    Stable for a checkout and different between checkouts (derived from its path), so that
    the test sessions of two clones on one machine never stop each other's services. Below
    Linux's ephemeral range (32768 up), where clients' own sockets would collide.
    """
    digest = int.from_bytes(hashlib.sha256(str(root.resolve()).encode()).digest()[:8], "big")
    base = 20_000 + (digest % 3_000) * 4
    return base, base + 1, base + 2, base + 3


async def assert_down(host: str, port: int, name: str) -> None:
    """Fail unless nothing accepts connections on `port` (the fault really was injected)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    except (OSError, TimeoutError):
        return
    writer.close()
    await writer.wait_closed()
    raise AssertionError(
        f"{name} still answers on {host}:{port} after the stop (did another test session "
        "start it again? the own services are shared by every session in this checkout)"
    )


async def stop_own(own: OwnServices, name: str) -> None:
    """Stop `kafka` or `postgres` (off the event loop) and fail unless it really is down."""
    await asyncio.to_thread(own.stop, name)
    if name == "postgres":
        db = urlsplit(own.services.database_url)
        await assert_down(db.hostname or "127.0.0.1", db.port or 5432, "PostgreSQL")
    else:
        host, port = own.services.kafka_bootstrap.rsplit(":", 1)
        await assert_down(host, int(port), "Kafka")
