"""Workers under test: their settings, in process or as a subprocess, their log lines,
and waiting for what they do."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from pydantic import SecretStr

from tests.helpers.db import count
from tests.helpers.http import http_get
from tests.helpers.kafka import Topics
from tests.helpers.services import ROOT, Services
from worker.metrics import Metrics
from worker.runtime.app import run_worker
from worker.runtime.logging import REPEATED_EVENTS
from worker.settings import Settings


def make_settings(services: Services, db_url: str, topics: Topics, **overrides: Any) -> Settings:
    """Settings pointing at this test's database and topics; `overrides` by field name."""
    fields: dict[str, Any] = {
        "database_url": db_url,
        "kafka_bootstrap_servers": services.kafka_bootstrap,
        "signals_topic": topics.signals,
        "prices_topic": topics.prices,
        "dlq_topic": topics.dlq,
        "consumer_group": topics.group,
        "http_port": 0,
        "log_format": "json",
        **overrides,
    }
    return Settings(**fields)


def env_for(settings: Settings) -> dict[str, str]:
    """The environment of a worker subprocess with the same settings as `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    # Every setting the test chose (make_settings' overrides included) reaches the process.
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is not None:
            plain = value.get_secret_value() if isinstance(value, SecretStr) else value
            env[name.upper()] = str(plain)
    env.update(
        DATABASE_URL=settings.database_url.get_secret_value(),
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        SIGNALS_TOPIC=settings.signals_topic,
        PRICES_TOPIC=settings.prices_topic,
        DLQ_TOPIC=settings.dlq_topic,
        CONSUMER_GROUP=settings.consumer_group,
        HTTP_PORT="0",
        LOG_FORMAT="json",
        KAFKA_TOPIC_PARTITIONS="3",
    )
    return env


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[tuple[asyncio.Task[int], int]]:
    """An in-process worker until the block ends (then drained); yields (task, http port)."""
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_worker(settings, stop, metrics=metrics, started=started))
    done, _ = await asyncio.wait({task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        raise AssertionError("the worker stopped during start-up")
    if started not in done:
        task.cancel()
        raise AssertionError("the worker did not start within 30s")
    try:
        yield task, started.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


def worker_env(services: Services, db_url: str, topics: Topics, **overrides: Any) -> dict[str, str]:
    """The environment of a worker or command run on this test's database and topics."""
    return env_for(make_settings(services, db_url, topics, **overrides))


class WorkerProcess:
    """`python -m worker run` as a subprocess, with its stderr kept for inspection."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None
        self.http_port: int | None = None

    def start(self) -> WorkerProcess:
        """Start it; returns at once (see `wait_started`)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if '"worker_started"' in line:
                port = re.search(r'"http_port": (\d+)', line)
                if port:
                    self.http_port = int(port.group(1))

    async def wait_started(self, timeout_s: float = 30) -> None:
        """Wait until the worker logged `worker_started` (at most `timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.http_port is None:
                    if self.proc is not None and self.proc.poll() is not None:
                        msg = f"worker exited with {self.proc.returncode}:\n{self.tail()}"
                        raise AssertionError(msg)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            msg = f"worker did not start in {timeout_s}s:\n{self.tail()}"
            raise AssertionError(msg) from None

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close()

    def terminate(self, timeout_s: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.kill()
            self._close()

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def is_alive(self) -> bool:
        """Started and not exited (yet)."""
        return self.proc is not None and self.proc.poll() is None

    async def get(self, path: str) -> tuple[int, str]:
        """GET `path` on its HTTP port: (status, body)."""
        assert self.http_port is not None, "the worker has not started"
        return await http_get(self.http_port, path)

    def tail(self, n: int = 30) -> str:
        """The last `n` lines of its stderr."""
        return "\n".join(self.lines[-n:])


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 30, what: str = "condition"
) -> None:
    """Poll `check` until it holds; fail the test with `what` after `timeout_s` (a bound)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:  # polling another process's work: no event to wait on
                if await check():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None


async def wait_for_count(
    db_url: str, sql: str, expected: int, *args: Any, timeout_s: float = 30
) -> None:
    """Wait until `sql` counts `expected`."""
    seen = -1

    async def check() -> bool:
        nonlocal seen
        seen = await count(db_url, sql, *args)
        return seen >= expected

    try:
        await wait_for(check, timeout_s=timeout_s, what=f"{expected} from {sql!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last count {seen})") from None


def log_events(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines of one event."""
    marker = f'"{event}"'
    out = []
    for line in worker.lines:
        if marker in line:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if entry.get("event") == event:
                out.append(entry)
    return out


def repeated_lines(worker: WorkerProcess) -> tuple[int, int, str]:
    """(warning and error lines in all, the most lines of one kind, that kind): a kind is a
    library's (logger, message) or one of the worker's lines a lasting condition repeats
    (`worker.runtime.logging.REPEATED_EVENTS`); lines naming a record or an agent are not
    counted."""
    kinds: Counter[str] = Counter()
    total = 0
    for line in worker.lines:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or entry.get("level") not in {"warning", "error"}:
            continue
        total += 1
        if "logger" in entry:
            kinds[f"{entry['logger']}: {str(entry.get('event'))[:60]}"] += 1
        elif entry.get("event") in REPEATED_EVENTS:
            kinds[f"{entry['event']} ({entry.get('cause')})"] += 1
    if not kinds:
        return total, 0, ""
    kind, most = kinds.most_common(1)[0]
    return total, most, kind


def starts(worker: WorkerProcess) -> int:
    """How many times this process logged `worker_started` (a restart would log it again)."""
    return len(log_events(worker, "worker_started"))


def terminate_within(worker: WorkerProcess, bound_s: float) -> int:
    """SIGTERM; the exit code, or a failure with the worker's last lines past `bound_s`."""
    try:
        return worker.terminate(timeout_s=bound_s)
    except subprocess.TimeoutExpired:
        own = [line for line in worker.lines if '"logger": "aiokafka' not in line]
        raise AssertionError(
            f"the worker had not exited {bound_s}s after SIGTERM (killed); its last lines "
            "but aiokafka's:\n" + "\n".join(own[-25:])
        ) from None


def assert_ran_through(worker: WorkerProcess, code: int, *, alive: bool) -> None:
    """The worker ran the whole scenario as one process (`alive` at its end, started once:
    no crash, no restart) and exited 0 on SIGTERM."""
    assert alive and starts(worker) == 1, worker.tail()
    assert code == 0, worker.tail()
