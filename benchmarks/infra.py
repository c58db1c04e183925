"""The benchmark's own databases, topics and worker processes, and what the machine is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.db.migrations import default_schema_dir, load_migrations, migrate
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# The worker's defaults (`DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_TOPIC_PARTITIONS`);
# the benchmark's topics have as many partitions.
_DEFAULTS = Settings.model_fields
DEFAULT_DATABASE_URL: str = _DEFAULTS["database_url"].default.get_secret_value()
DEFAULT_BOOTSTRAP: str = _DEFAULTS["kafka_bootstrap_servers"].default
PARTITIONS: int = _DEFAULTS["kafka_topic_partitions"].default


class BenchError(Exception):
    """The benchmark cannot go on (a service is missing, the worker died); one line."""


# ---------------------------------------------------------------------------- progress


class Progress:
    """One progress line on stderr: rewritten in place on a terminal, else one per phase."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._tty = sys.stderr.isatty()
        self._width = 0

    def __call__(self, message: str, *, transient: bool = False) -> None:
        """Show `message`; a `transient` one (a counter) is skipped when not on a terminal."""
        line = f"[bench {time.monotonic() - self._started:6.1f}s] {message}"
        if self._tty:
            sys.stderr.write("\r" + line.ljust(self._width))
            self._width = len(line)
            sys.stderr.flush()
        elif not transient:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        """End the progress line (before the table is printed)."""
        if self._tty:
            sys.stderr.write("\n")
            sys.stderr.flush()

    @property
    def elapsed_s(self) -> float:
        """Seconds since the benchmark started."""
        return time.monotonic() - self._started


# ---------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Services:
    """Where PostgreSQL and Kafka are (`DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS`)."""

    database_url: str
    bootstrap: str

    @classmethod
    def from_env(cls) -> Services:
        """The services of the environment, else those of `scripts/services.sh`."""
        return cls(
            os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP,
        )

    def with_database(self, name: str) -> str:
        """The DSN of database `name` on the same server."""
        return urlunsplit(urlsplit(self.database_url)._replace(path=f"/{name}"))


async def connect(dsn: str) -> asyncpg.Connection:
    """A connection, with a one-line error when the server does not answer."""
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        host = urlsplit(dsn).netloc.rsplit("@", 1)[-1]
        raise BenchError(f"cannot connect to PostgreSQL at {host}: {exc}") from exc


class Databases:
    """A template database with the schema, and scenario databases cloned from it."""

    def __init__(self, services: Services, tag: str) -> None:
        self._services = services
        self._template = f"bench_{tag}_tmpl"
        self._tag = tag
        self._created: list[str] = []

    async def create_template(self) -> None:
        """Create the template and apply every `schema/*.sql` to it."""
        await self._admin(f'CREATE DATABASE "{self._template}"')
        self._created.append(self._template)
        conn = await connect(self._services.with_database(self._template))
        try:
            await migrate(conn, load_migrations(default_schema_dir()))
        finally:
            await conn.close()

    async def create(self, name: str) -> str:
        """A new database `bench_<tag>_<name>` with the schema; returns its DSN."""
        db = f"bench_{self._tag}_{name}"
        await self._admin(f'CREATE DATABASE "{db}" TEMPLATE "{self._template}"')
        self._created.append(db)
        return self._services.with_database(db)

    async def drop(self, dsn: str) -> None:
        """Drop the database of `dsn` (disconnecting whoever is still on it)."""
        name = urlsplit(dsn).path.lstrip("/")
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with contextlib.suppress(ValueError):
            self._created.remove(name)

    async def drop_all(self) -> None:
        """Drop every database this object created."""
        for name in list(reversed(self._created)):
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._created.clear()

    async def _admin(self, sql: str) -> None:
        conn = await connect(self._services.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


@dataclass(frozen=True)
class Topics:
    """One scenario's topic names and consumer group."""

    signals: str
    prices: str
    dlq: str
    group: str

    @property
    def events(self) -> str:
        """The events topic (the worker's default name, `<SIGNALS_TOPIC>.events`)."""
        return f"{self.signals}.events"


class TopicSet:
    """Creates topics of the benchmark's own and deletes them all at the end."""

    def __init__(self, services: Services, tag: str) -> None:
        self._services = services
        self._tag = tag
        self._created: list[str] = []

    async def create(self, name: str) -> Topics:
        """Fresh signal, price, dead-letter and events topics and a group for scenario `name`.

        The events topic is created here (not left to the worker, which creates it when
        missing) so that it is deleted with the others at the end."""
        base = f"bench-{self._tag}-{name}"
        topics = Topics(f"{base}.signals", f"{base}.prices", f"{base}.dlq", f"{base}.group")
        names = [topics.signals, topics.prices, topics.dlq, topics.events]
        admin = await self._admin()
        try:
            await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
        finally:
            await admin.close()
        self._created.extend(names)
        return topics

    async def delete_all(self) -> None:
        """Delete every topic this object created, and the commands topics the worker
        created beside their signals."""
        if not self._created:
            return
        commands = [f"{n}.commands" for n in self._created if n.endswith(".signals")]
        admin = await self._admin()
        try:
            existing = set(await admin.list_topics())
            await admin.delete_topics([n for n in [*self._created, *commands] if n in existing])
        finally:
            await admin.close()
        self._created.clear()

    async def _admin(self) -> Any:  # noqa: ANN401 - aiokafka is untyped
        admin = AIOKafkaAdminClient(bootstrap_servers=self._services.bootstrap)
        try:
            await admin.start()
        except Exception as exc:  # aiokafka raises several unrelated types here
            await admin.close()
            raise BenchError(f"cannot reach Kafka at {self._services.bootstrap}: {exc}") from exc
        return admin


# ---------------------------------------------------------------------------- the worker


def free_port() -> int:
    """A TCP port that nothing listens on right now (for the worker's HTTP server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    """`python -m worker run` as a subprocess on the scenario's database and topics.

    With `profile`, it runs under `py-spy record` (which writes the file when it exits).
    """

    services: Services
    dsn: str
    topics: Topics
    log_level: str = "WARNING"
    profile: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # more of the worker's settings
    proc: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    _stderr: IO[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Start it; returns at once (see `wait_ready`)."""
        self.http_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(
            DATABASE_URL=self.dsn,
            KAFKA_BOOTSTRAP_SERVERS=self.services.bootstrap,
            SIGNALS_TOPIC=self.topics.signals,
            PRICES_TOPIC=self.topics.prices,
            DLQ_TOPIC=self.topics.dlq,
            EVENTS_TOPIC=self.topics.events,
            CONSUMER_GROUP=self.topics.group,
            HTTP_PORT=str(self.http_port),
            LOG_LEVEL=self.log_level,
            LOG_FORMAT="json",
            KAFKA_TOPIC_PARTITIONS=str(PARTITIONS),
        )
        env.update(self.env)
        command = [sys.executable, "-m", "worker", "run"]
        if self.profile is not None:
            py_spy = Path(sys.executable).with_name("py-spy")
            command = [
                str(py_spy),
                "record",
                "--rate",
                "200",
                "--nonblocking",
                "--format",
                "raw" if self.profile.suffix == ".txt" else "flamegraph",
                "-o",
                str(self.profile),
                "--",
                *command,
            ]
        # The log goes to a temporary file: read for the error message, deleted at stop.
        self._stderr = tempfile.TemporaryFile(prefix="bench-worker-")  # noqa: SIM115
        self.proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        return self

    @property
    def pid(self) -> int:
        """The process id of the Python worker (py-spy's child when profiling)."""
        assert self.proc is not None
        if self.profile is None:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            pids = children.read_text().split()
            if pids:
                return int(pids[0])
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise `BenchError` with the log's tail if the worker has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"the worker exited with code {self.proc.returncode}:\n{self.tail()}")

    async def wait_ready(self, timeout_s: float = 60) -> None:
        """Wait until `/readyz` answers 200 (partitions assigned, database reachable)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if await _http_status(self.http_port, "/readyz") == 200:
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"the worker was not ready within {timeout_s:.0f}s:\n{self.tail()}")

    def peak_rss_kb(self) -> int | None:
        """VmHWM (peak resident set) of the worker in kB, from /proc; None once it exited."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) if match else None

    async def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (drain) and wait; SIGKILL after `timeout_s`. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return proc.returncode

    def tail(self, lines: int = 20) -> str:
        """The last lines of the worker's stderr."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - 16_384))
        text = self._stderr.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


async def _http_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout=2
        )
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=2)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def new_tag() -> str:
    """A short tag that names this run's databases and topics."""
    return uuid.uuid4().hex[:8]


# ---------------------------------------------------------------------------- the machine


@dataclass(frozen=True)
class Machine:
    """What the figures were measured on."""

    cpu: str
    cores: int
    ram_gb: float
    os: str
    python: str
    kafka: str
    postgres: str
    aiokafka: str
    asyncpg: str
    pg_settings: dict[str, str]


async def describe_machine(services: Services) -> Machine:
    """CPU, cores, RAM, OS and the versions of Python, Kafka, PostgreSQL and the clients."""
    import aiokafka

    cpu, ram_gb = _cpu_and_ram()
    conn = await connect(services.database_url)
    try:
        version = await conn.fetchval("SHOW server_version")
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
            [
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "shared_buffers",
                "max_connections",
                "track_commit_timestamp",
                "wal_level",
                "max_wal_size",
            ],
        )
    finally:
        await conn.close()
    settings = {r["name"]: r["setting"] + (f" x {r['unit']}" if r["unit"] else "") for r in rows}
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 0,
        ram_gb=ram_gb,
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        kafka=_kafka_version(),
        postgres=str(version),
        aiokafka=aiokafka.__version__,
        asyncpg=asyncpg.__version__,
        pg_settings=settings,
    )


def _cpu_and_ram() -> tuple[str, float]:
    """The CPU model and the RAM in GB, from /proc (Linux)."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0]
        ram_gb = int(mem.split()[1]) / 1024 / 1024
    return cpu, ram_gb


def _kafka_version() -> str:
    """The broker's version: `KAFKA_VERSION`, else the jars of the local broker's process.

    Kafka does not report its release over the protocol; the local broker of
    `scripts/services.sh` runs from a `kafka-<version>/lib` class path.
    """
    if os.environ.get("KAFKA_VERSION"):
        return os.environ["KAFKA_VERSION"]
    pidfile = ROOT / ".services" / "kafka.pid"
    with contextlib.suppress(OSError, ValueError):
        cmdline = Path(f"/proc/{int(pidfile.read_text())}/cmdline").read_bytes()
        match = re.search(rb"kafka-(\d+\.\d+\.\d+)/lib", cmdline)
        if match:
            return match.group(1).decode()
    return "unknown (the broker does not report it; set KAFKA_VERSION)"


# ---------------------------------------------------------------------------- CPU time

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far; None when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


BACKENDS = """
SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


class CpuMeter:
    """CPU seconds used by a process (the worker, else this one) and by the PostgreSQL
    backends serving its database (`process_s`, `database_s`).

    The backends are read from /proc (the server runs on this machine); where it does not,
    the database share stays unknown (None).
    """

    def __init__(self, worker: WorkerProcess | None, conn: asyncpg.Connection) -> None:
        """`worker` None: this process (the benchmark's own client work) instead."""
        self._pid = worker.pid if worker is not None else os.getpid()
        self._conn = conn
        self._start: dict[int, float] = {}
        self._process_start: float | None = None
        self.process_s: float | None = None
        self.database_s: float | None = None

    async def _backends(self) -> dict[int, float]:
        used = {}
        for row in await self._conn.fetch(BACKENDS):
            seconds = cpu_seconds(int(row["pid"]))
            if seconds is not None:
                used[int(row["pid"])] = seconds
        return used

    async def start(self) -> None:
        """Take the starting point."""
        self._process_start = cpu_seconds(self._pid)
        self._start = await self._backends()

    async def stop(self) -> None:
        """Take the end point (before the worker stops and its backends go away)."""
        end = cpu_seconds(self._pid)
        if end is not None and self._process_start is not None:
            self.process_s = end - self._process_start
        backends = await self._backends()
        if backends:
            self.database_s = sum(s - self._start.get(pid, 0.0) for pid, s in backends.items())


# ---------------------------------------------------------------------------- the gate

LOCK_WAITERS = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()
"""


class Gate:
    """A SHARE lock on the table a record's first write goes to, held while the worker
    starts: it fetches and blocks on that write, so the measurement starts, exactly, when
    the gate opens, not when a readiness poll happens to notice the worker."""

    def __init__(self, dsn: str, table: str) -> None:
        self._dsn = dsn
        self._table = table
        self._conn: asyncpg.Connection | None = None
        self._txn: Any = None

    async def close(self) -> None:
        """Take the lock (before the worker starts)."""
        self._conn = await connect(self._dsn)
        self._txn = self._conn.transaction()
        await self._txn.start()
        await self._conn.execute(f"LOCK TABLE {self._table} IN SHARE MODE")

    async def wait_blocked(self, worker: WorkerProcess, timeout_s: float = 60) -> bool:
        """Wait until a worker backend waits for the lock, then a little for the other
        partitions; False if none did within `timeout_s`."""
        assert self._conn is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            worker.check_alive()
            # pg_stat_activity is read once per transaction unless the snapshot is cleared.
            await self._conn.execute("SELECT pg_stat_clear_snapshot()")
            if await self._conn.fetchval(LOCK_WAITERS):
                await asyncio.sleep(0.3)
                return True
            await asyncio.sleep(0.02)
        return False

    async def open(self) -> None:
        """Release the lock; the worker goes on."""
        if self._conn is not None:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._txn.rollback()
            await self._conn.close()
            self._conn = None
