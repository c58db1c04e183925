"""`make run-image`: the image run as the README says, with the engine `make image` chose.

The target builds the image (cached layers: seconds), migrates the database from the image and
runs the worker in the foreground on the host network, with podman's CONTAINERS_CONF where
podman is the engine (plain `podman run` fails here with "crun: setrlimit RLIMIT_NOFILE").
This test runs the make target itself against a database and topics of its own, waits for the
containerised worker's /readyz and /healthz, then stops the container: the worker drains and
`make` exits 0.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.containers.conftest import ROOT, SETUP_TIMEOUT_S, Engine, free_port, migration_names
from tests.helpers.db import connected
from tests.helpers.http import http_get
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import env_for, make_settings, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.timeout(SETUP_TIMEOUT_S + 300)]

STOP_GRACE_S = 30


async def test_make_run_image_migrates_and_runs_the_worker_until_stopped(
    engine: Engine,
    image: str,
    services: Services,
    empty_db: str,
    topics: Topics,
    tmp_path: Path,
) -> None:
    http_port = free_port()
    name = f"sw-run-image-{uuid.uuid4().hex[:10]}"
    env = env_for(make_settings(services, empty_db, topics))
    env["HTTP_PORT"] = str(http_port)
    env.pop("CONTAINERS_CONF", None)  # the target finds it itself
    env["CONTAINER_NAME"] = name
    log_path = tmp_path / "make.log"
    with log_path.open("w") as log:
        make = subprocess.Popen(  # noqa: ASYNC220 (a long-running child, polled below)
            ["make", "--no-print-directory", "run-image", f"IMAGE={image}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_answering(make, http_port, log_path)
        async with connected(empty_db) as conn:
            applied = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
        assert sorted(applied) == list(migration_names())
        assert (await http_get(http_port, "/healthz"))[0] == 200
        running = await engine.arun("inspect", "--format", "{{.State.Running}}", name)
        assert running.stdout.strip() == "true"

        await engine.arun("stop", "--time", str(STOP_GRACE_S), name, timeout_s=STOP_GRACE_S + 30)
        code = await asyncio.to_thread(make.wait, timeout=60)
    finally:
        if make.poll() is None:
            make.kill()
            make.wait()
        await engine.arun("rm", "--force", name, check=False)

    output = log_path.read_text()
    # The drain's own exit 0 (a SIGKILL after the grace period gives 137), through make.
    assert code == 0, output[-3000:]
    # Progress: each engine command, as one could paste it (podman's config in front).
    prefix = r"CONTAINERS_CONF=\S+ " if engine.name == "podman" else ""
    commands = [line for line in output.splitlines() if line.startswith("[containers] run: ")]
    assert any(
        re.match(rf"\[containers\] run: {prefix}{engine.name} run .*--network host", c)
        and c.endswith(f"{image} migrate")
        for c in commands
    ), output[-3000:]
    assert any(f"--name {name}" in c and c.endswith(f"{image} run") for c in commands), commands
    assert not [c for c in commands if "postgresql://" in c], "the DSN goes by name, unprinted"


async def wait_answering(make: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    """Wait for /readyz 200; fail at once, with make's output, if make ends first."""

    async def ready() -> bool:
        if make.poll() is not None:
            pytest.fail(f"make run-image exited {make.returncode}:\n{tail(log_path)}")
        try:
            status, _ = await http_get(port, "/readyz")
        except OSError:
            return False
        return status == 200

    try:
        await wait_for(ready, timeout_s=180, what="/readyz of the worker in the container")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{tail(log_path)}") from None


def tail(log_path: Path) -> str:
    """The end of make's output, for a failure message."""
    return log_path.read_text()[-3000:]
