"""The image, built from the Dockerfile and run as users run it, against the real services.

One container migrates an empty database, another runs the worker: it gets ready, turns a
published signal into a trade, and on `stop` (SIGTERM) drains and exits 0, long before the
grace period would have ended in SIGKILL. Both run as they would in production: the image's
own user (uid 10001) and a read-only root filesystem with nothing writable mounted (podman's
default tmpfs mounts of a read-only container are turned off, as Docker and Kubernetes have
none), on the host network so they reach the tests' Kafka and PostgreSQL on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
import tomllib
import uuid
from typing import Any

import pytest

from tests.containers.conftest import (
    ROOT,
    SETUP_TIMEOUT_S,
    Engine,
    env_flags,
    free_port,
    migration_names,
)
from tests.helpers.books import make_account, set_sol_price, signal_message
from tests.helpers.db import connected
from tests.helpers.http import http_get
from tests.helpers.kafka import Topics, publish
from tests.helpers.services import Services
from tests.helpers.workers import env_for, make_settings, wait_for
from worker.settings import Settings

pytestmark = [pytest.mark.containers, pytest.mark.timeout(SETUP_TIMEOUT_S + 300)]

WORKER_UID = 10001
STOP_GRACE_S = 30


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


def container_env(settings: Settings, http_port: int) -> dict[str, str]:
    """The worker's settings only (the host's PATH and the like stay out of the container)."""
    env = env_for(settings)
    env["HTTP_PORT"] = str(http_port)
    return {name: value for name, value in env.items() if name.lower() in Settings.model_fields}


def run_flags(engine: Engine, env: dict[str, str]) -> list[str]:
    """How the tests run the image: host network, read-only root, the image's user."""
    flags = ["--network", "host", "--read-only", *env_flags(env)]
    if engine.name == "podman":
        # podman mounts tmpfs on /tmp, /var/tmp and /run of a read-only container; Docker
        # and Kubernetes do not: without them, this proves the worker writes nowhere.
        flags.append("--read-only-tmpfs=false")
    return flags


def log_events(logs: str) -> list[dict[str, Any]]:
    """The JSON log lines of a container's output."""
    events = []
    for line in logs.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def test_image_reports_its_version_in_the_cli_and_the_label(engine: Engine, image: str) -> None:
    version = project_version()
    printed = engine.run("run", "--rm", "--network", "host", image, "--version")
    label = engine.run(
        "image",
        "inspect",
        "--format",
        '{{ index .Config.Labels "org.opencontainers.image.version" }}',
        image,
    )
    assert printed.stdout.strip() == f"signal-worker {version}"
    assert label.stdout.strip() == version


async def test_image_migrates_trades_and_drains_as_non_root_on_a_read_only_root(
    engine: Engine, image: str, services: Services, empty_db: str, topics: Topics
) -> None:
    http_port = free_port()
    env = container_env(make_settings(services, empty_db, topics), http_port)
    flags = run_flags(engine, env)

    # 1. migrate: a one-shot container, as a release's migration job runs it.
    await engine.arun("run", "--rm", *flags, image, "migrate")
    async with connected(empty_db) as conn:
        applied = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
        assert sorted(applied) == list(migration_names())
        account = await make_account(conn)
        await set_sol_price(conn, "150")

    # 2. run: the image's default command.
    name = f"sw-test-{uuid.uuid4().hex[:10]}"
    await engine.arun("run", "--detach", "--name", name, "--no-healthcheck", *flags, image)
    try:
        await wait_ready(engine, name, http_port)
        await assert_runs_as_the_worker_user(engine, name)
        await assert_root_filesystem_is_read_only(engine, name)
        await assert_image_healthcheck_passes(engine, name, image)

        await publish(services.kafka_bootstrap, topics.signals, [signal_message(account.user_id)])
        await wait_for(lambda: has_success(empty_db), timeout_s=60, what="a success execution")

        started = time.monotonic()
        await engine.arun("stop", "--time", str(STOP_GRACE_S), name, timeout_s=STOP_GRACE_S + 30)
        stop_s = time.monotonic() - started
        state = await engine.arun(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name
        )
        logs = await engine.arun("logs", name)
    finally:
        await engine.arun("rm", "--force", name, check=False)

    # Exit 0 is the drain's own: a SIGKILL at the end of the grace period gives 137.
    assert state.stdout.split() == ["exited", "0"], f"{state.stdout}\n{logs.stderr[-3000:]}"
    assert stop_s < STOP_GRACE_S, f"stop took {stop_s:.1f}s"
    events = log_events(logs.stdout + logs.stderr)
    by_name = {e.get("event"): e for e in events}
    assert by_name["worker_starting"]["version"] == project_version()
    assert {"worker_started", "shutdown_requested", "worker_draining", "worker_stopped"} <= set(
        by_name
    ), [e.get("event") for e in events]


async def has_success(db_url: str) -> bool:
    async with connected(db_url) as conn:
        return bool(
            await conn.fetchval("SELECT count(*) FROM signal_executions WHERE status = 'success'")
        )


async def wait_ready(engine: Engine, name: str, port: int, timeout_s: float = 60) -> None:
    """Wait for /readyz 200; fail early, with the container's log, if it exits."""
    last = "no answer"

    async def ready() -> bool:
        nonlocal last
        try:
            status, body = await http_get(port, "/readyz")
        except OSError as exc:
            last = str(exc)
            running = await engine.arun("inspect", "--format", "{{.State.Running}}", name)
            if running.stdout.strip() != "true":
                logs = await engine.arun("logs", name, check=False)
                pytest.fail(f"the worker container exited:\n{logs.stderr[-3000:]}")
            return False
        last = f"{status} {body}"
        return status == 200

    try:
        await wait_for(ready, timeout_s=timeout_s, what="/readyz to answer 200")
    except AssertionError as exc:
        logs = await engine.arun("logs", name, check=False)
        raise AssertionError(f"{exc}; last: {last}\n{logs.stderr[-3000:]}") from None
    health = await http_get(port, "/healthz")
    assert health[0] == 200


async def assert_runs_as_the_worker_user(engine: Engine, name: str) -> None:
    """The worker process itself (PID 1), not just the image's configuration, is uid 10001."""
    status = await engine.arun("exec", name, "cat", "/proc/1/status")
    ids = {
        line.split(":")[0]: line.split()[1:]
        for line in status.stdout.splitlines()
        if line.startswith(("Uid:", "Gid:"))
    }
    assert ids["Uid"] == [str(WORKER_UID)] * 4, ids
    assert ids["Gid"] == [str(WORKER_UID)] * 4, ids
    cmdline = await engine.arun("exec", name, "cat", "/proc/1/cmdline")
    assert "signal-worker" in cmdline.stdout, cmdline.stdout


async def assert_root_filesystem_is_read_only(engine: Engine, name: str) -> None:
    """Even root cannot write anywhere in the container: the filesystem itself refuses."""
    readonly = await engine.arun("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name)
    assert readonly.stdout.strip() == "true"
    for path in ("/probe", "/tmp/probe", "/opt/venv/probe"):  # noqa: S108 (a path in the container)
        attempt = await engine.arun(
            "exec", "--user", "0", name, "python", "-c", f"open({path!r}, 'w')", check=False
        )
        assert attempt.returncode != 0, f"{path} is writable"
        assert "Read-only file system" in attempt.stderr, attempt.stderr


async def assert_image_healthcheck_passes(engine: Engine, name: str, image: str) -> None:
    """The image's HEALTHCHECK command, run in the container, succeeds."""
    inspected = await engine.arun(
        "image", "inspect", "--format", "{{json .Config.Healthcheck}}", image
    )
    test = json.loads(inspected.stdout)["Test"]
    assert test[0] == "CMD-SHELL", test
    check = await engine.arun("exec", name, "sh", "-c", test[1], check=False)
    assert check.returncode == 0, check.stderr
