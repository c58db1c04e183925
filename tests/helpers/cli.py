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


async def run_cli(env: dict[str, str], *args: str, timeout_s: float = 90) -> CliRun:
    """`python -m worker ARGS` in `env` without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    assert proc.returncode is not None
    return CliRun(proc.returncode, out.decode(), err.decode().splitlines())


def assert_log_lines_then_one_error(lines: list[str], command: str) -> str:
    """No traceback, every line but the last a JSON log line; returns the last line."""
    assert lines, "nothing on stderr"
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    *logs, last = lines
    for line in logs:
        assert isinstance(json.loads(line), dict), line
    assert last.startswith(f"signal-worker {command}: "), last
    return last
