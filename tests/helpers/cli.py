"""The command line: `python -m worker ...` runs and what their stderr must look like."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import NamedTuple

from tests.helpers.services import ROOT


class CliRun(NamedTuple):
    """What one `python -m worker ...` run left: exit code, stdout, stderr lines."""

    code: int
    stdout: str
    stderr: list[str]


async def start_cli(
    env: dict[str, str] | None, *args: str, stdout: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """Start `python -m worker ARGS` in `env` (None: this process's) from the checkout's
    root, stderr piped; for a test that acts while it runs (else `run_cli`)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=env,
        cwd=ROOT,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish_cli(proc: asyncio.subprocess.Process, timeout_s: float = 90) -> CliRun:
    """Wait for a started run's end (failing the test past `timeout_s`): what it left."""
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    assert proc.returncode is not None
    return CliRun(proc.returncode, (out or b"").decode(), err.decode().splitlines())


async def run_cli(env: dict[str, str] | None, *args: str, timeout_s: float = 90) -> CliRun:
    """`python -m worker ARGS` in `env` (None: this process's) without blocking the event
    loop, from the checkout's root; fails the test past `timeout_s`."""
    return await finish_cli(await start_cli(env, *args), timeout_s)


def assert_log_lines_then_one_error(lines: list[str], command: str) -> str:
    """No traceback, every line but the last a JSON log line; returns the last line."""
    assert lines, "nothing on stderr"
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    *logs, last = lines
    for line in logs:
        assert isinstance(json.loads(line), dict), line
    assert last.startswith(f"signal-worker {command}: "), last
    return last
