"""Fixtures for the deployables: a container engine, the image, helm, an empty database.

`scripts/container-engine.sh` does the work (and installs what is missing: podman, the
stand-in base image, helm); these fixtures call it once per session. Its progress lines
(debootstrap, the image build, the helm build) go straight to the terminal, past pytest's
capture, so a cold first run does not look hung. Where neither Docker nor podman can be had,
the tests fail with the script's one line saying why; they never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "container-engine.sh"
IMAGE_TAG = "signal-worker:test"
# A cold first run builds podman's stand-in base image (debootstrap), the image and helm.
SETUP_TIMEOUT_S = 1500


@dataclass(frozen=True)
class Engine:
    """`docker` or `podman`, with the environment `scripts/container-engine.sh` chose for it."""

    name: str
    env: dict[str, str]

    def run(
        self, *args: str, timeout_s: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`ENGINE ARGS`; with `check`, fail the test on a non-zero exit, showing stderr."""
        result = subprocess.run(
            [self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{self.name} {' '.join(args[:3])} ... exited {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    async def arun(
        self, *args: str, timeout_s: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`run` without blocking the event loop."""
        return await asyncio.to_thread(self.run, *args, timeout_s=timeout_s, check=check)


def run_script(request: pytest.FixtureRequest, *args: str) -> str:
    """`scripts/container-engine.sh ARGS`: stdout; its stderr shown live; one line on failure."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    last = ""
    with (
        capture.global_and_fixture_disabled() if capture else contextlib.nullcontext(),
        subprocess.Popen(
            [str(SCRIPT), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        ) as proc,
    ):
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            last = line.strip() or last
        out = proc.stdout.read()
        code = proc.wait(timeout=SETUP_TIMEOUT_S)
    if code != 0:
        pytest.fail(last or f"{SCRIPT.name} {' '.join(args)} exited {code}", pytrace=False)
    return out


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Engine:
    """Docker where an engine answers, else podman (installed from Debian if missing)."""
    values = dict(
        line.split("=", 1) for line in run_script(request, "engine").splitlines() if "=" in line
    )
    env = dict(os.environ)
    if "CONTAINERS_CONF" in values:
        env["CONTAINERS_CONF"] = values["CONTAINERS_CONF"]
    return Engine(values["CONTAINER_ENGINE"], env)


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest, engine: Engine) -> str:
    """The image built from the Dockerfile (cached layers make a rebuild take seconds), with
    the engine of `engine`."""
    del engine  # built by the same script, which chooses the same engine
    return run_script(request, "build", IMAGE_TAG).strip().splitlines()[-1]


@pytest.fixture(scope="session")
def helm(request: pytest.FixtureRequest) -> str:
    """The path of helm, built once with `go install` into the cache."""
    return run_script(request, "helm").strip().splitlines()[-1]


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env_flags(env: dict[str, str]) -> list[str]:
    """`--env NAME=VALUE` for each variable."""
    return [flag for name, value in sorted(env.items()) for flag in ("--env", f"{name}={value}")]


def migration_names() -> Sequence[str]:
    """The names of the schema files in the repository, in order."""
    return sorted(p.name for p in (ROOT / "worker" / "schema").glob("*.sql"))
