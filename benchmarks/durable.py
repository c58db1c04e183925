"""A PostgreSQL server of the benchmark's own, with the durability a production server has.

The local server of `scripts/services.sh` is disposable: `fsync`, `synchronous_commit`
and `full_page_writes` are off, which flatters every figure and the naive baseline (one
commit per execution) most. The headline figures come from this one instead: a fresh
cluster on this machine's disk with those three on (PostgreSQL's defaults), started on a
free port for the run and deleted after it. The worker, the COPY ceiling and the naive
baseline all run on it, so their ratios compare like with like.

Set `BENCH_DATABASE_URL` to measure a server of your own instead (its settings are
reported as they are; no second, disposable column is measured then).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import asyncpg

from benchmarks.infra import BenchError, Progress, free_port

# What differs from `initdb`'s defaults, and why. The durability settings are PostgreSQL's
# defaults, written out so that the report shows them; the rest sizes the server like the
# local one (so the two columns differ only in durability) and like a small production one.
SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_level": "replica",
    "shared_buffers": "256MB",
    "max_connections": "300",
    # Checkpoints every 5 minutes or 4 GB of WAL (the defaults are 5 minutes or 1 GB): a
    # production server with this write rate is tuned so; a forced checkpoint every minute
    # would measure the checkpointer rather than the worker.
    "max_wal_size": "4GB",
}
START_TIMEOUT_S = 60.0


def _bindir() -> Path:
    """The server binaries of Debian's package (`/usr/lib/postgresql/<n>/bin`), or PATH's."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "postgres").exists() and (candidate / "initdb").exists():
            return candidate
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).parent
    raise BenchError(
        "the durable PostgreSQL needs the server binaries (Debian's postgresql package, as "
        "`make services` installs); or set BENCH_DATABASE_URL to a server of your own"
    )


class DurablePostgres:
    """Start with `start()`, stop and delete with `stop()`; `dsn` is the admin database."""

    def __init__(self, tag: str, progress: Progress) -> None:
        self._progress = progress
        self._bindir = _bindir()
        # Under /var/tmp: on disk (not tmpfs), and reachable by the `postgres` user.
        # A new directory of a random name (`mkdir` refuses one that exists).
        self.datadir = Path("/var/tmp") / f"signal-worker-bench-{tag}"  # noqa: S108
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0  # the server refuses to run as root

    @property
    def dsn(self) -> str:
        """The DSN of the server's `postgres` database (as superuser `postgres`)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, command: list[str]) -> list[str]:
        if not self._as_postgres:
            return command
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *command]

    async def start(self) -> str:
        """Create the cluster, start the server, wait until it answers; its admin DSN."""
        self.port = free_port()
        self._progress(f"durable PostgreSQL: creating a cluster in {self.datadir}")
        self.datadir.mkdir(mode=0o700, parents=True, exist_ok=False)
        if self._as_postgres:
            shutil.chown(self.datadir, "postgres", "postgres")
        initdb = [
            str(self._bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]
        done = await asyncio.to_thread(
            subprocess.run, self._as_owner(initdb), capture_output=True, check=False
        )
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise BenchError(f"initdb of the durable PostgreSQL failed: {' / '.join(tail)}")
        settings = {
            **SETTINGS,
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.datadir}'",
        }
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# signal-worker benchmark: a durable server\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        log = (self.datadir / "server.log").open("ab")
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            self._as_owner([str(self._bindir / "postgres"), "-D", str(self.datadir)]),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        started = time.monotonic()
        while True:
            if self._proc.poll() is not None:
                raise BenchError(
                    "the durable PostgreSQL exited during start-up: "
                    + self._log_tail().replace("\n", " / ")
                )
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                conn = await asyncpg.connect(self.dsn, timeout=2)
                await conn.close()
                break
            if time.monotonic() - started > START_TIMEOUT_S:
                raise BenchError(f"the durable PostgreSQL was not ready in {START_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.2)
        self._progress(
            f"durable PostgreSQL: ready on 127.0.0.1:{self.port} after "
            f"{time.monotonic() - started:.1f}s (fsync, synchronous_commit, full_page_writes on)"
        )
        return self.dsn

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.datadir / "server.log").read_text().splitlines()[-3:])
        return "no log"

    async def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its cluster."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(asyncio.to_thread(self._proc.wait), timeout=30)
            except TimeoutError:
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
        self._proc = None
        shutil.rmtree(self.datadir, ignore_errors=True)
