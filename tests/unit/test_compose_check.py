"""`make up` / `make down` say in one line what compose lacks, and stop before writing anything.

Without the check, the docker CLI with no compose plugin answered `docker compose up -d` with
"unknown shorthand flag: 'd' in -d". Each case runs the real `make up` and `make down` of a
copy of the project's Makefile, scripts and compose file, on a PATH that holds only what they
need plus, where the case says so, a stand-in `docker` / `docker-compose` that answers as the
real ones do when the plugin, a recent enough docker-compose or the engine is missing (and
logs every call, so the test sees that compose itself never ran). Where this machine has no
compose command at all (as this project's machines), its own PATH is one more case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the Makefile's up/down recipes and the scripts they run call.
TOOLS = ("bash", "dirname", "timeout", "touch", "chmod", "grep", "head", "base64", "tr", "cat")

DOCKER_WITHOUT_PLUGIN = """\
case $1 in
compose) echo "docker: unknown command: docker compose" >&2; exit 1 ;;
info) echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2; exit 1 ;;
esac
"""
DOCKER_WITH_PLUGIN_NO_ENGINE = """\
case $1 in
compose) [ "$2" = version ] && { echo "Docker Compose version v2.39.1"; exit 0; }; exit 1 ;;
info) echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2; exit 1 ;;
esac
"""
OLD_DOCKER_COMPOSE = '[ "$1 $2" = "version --short" ] && echo 1.25.0\n'


def project_copy(tmp_path: Path) -> Path:
    """The Makefile, scripts and compose file, where a written .env can be seen."""
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "Makefile", copy / "Makefile")
    shutil.copy(ROOT / "docker-compose.yml", copy / "docker-compose.yml")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    return copy


def bare_path(tmp_path: Path, stand_ins: dict[str, str]) -> str:
    """A PATH of the TOOLS and the stand-ins (each logs its arguments to calls.log)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (folder / tool).symlink_to(found)
    for name, body in stand_ins.items():
        script = folder / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >>"{tmp_path}/calls.log"\n{body}exit 0\n')
        script.chmod(0o755)
    return str(folder)


def run_make(project: Path, target: str, path: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    assert make
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")}
    env["PATH"] = path
    return subprocess.run(
        [make, "--no-print-directory", target],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def no_compose_on_this_machine() -> bool:
    if shutil.which("docker-compose"):
        return False
    docker = shutil.which("docker")
    return docker is None or (
        subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=15, check=False
        ).returncode
        != 0
    )


CASES = {
    "docker CLI without the compose plugin": (
        {"docker": DOCKER_WITHOUT_PLUGIN},
        "no compose command (neither the `docker compose` plugin nor docker-compose",
    ),
    "no docker at all": ({}, "no compose command"),
    "docker-compose older than 1.29": (
        {"docker": DOCKER_WITHOUT_PLUGIN, "docker-compose": OLD_DOCKER_COMPOSE},
        "docker-compose 1.25.0 is too old for docker-compose.yml (1.29 or newer is needed)",
    ),
    "the plugin but no engine": (
        {"docker": DOCKER_WITH_PLUGIN_NO_ENGINE},
        "docker compose needs a Docker engine, and none answers",
    ),
}


@pytest.mark.parametrize("target", ["up", "down"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_compose_targets_say_what_is_missing_in_one_line(
    tmp_path: Path, target: str, case: str
) -> None:
    stand_ins, reason = CASES[case]
    project = project_copy(tmp_path)
    result = run_make(project, target, bare_path(tmp_path, stand_ins))
    assert_one_line(result, reason, target)
    assert not (project / ".env").exists(), "nothing is written before the check passes"
    calls = (tmp_path / "calls.log").read_text() if (tmp_path / "calls.log").exists() else ""
    assert f"compose {target}" not in calls, calls


@pytest.mark.skipif(
    not no_compose_on_this_machine(), reason="this machine has a compose command (cases above)"
)
@pytest.mark.parametrize("target", ["up", "down"])
def test_compose_targets_on_this_machine_without_compose(tmp_path: Path, target: str) -> None:
    project = project_copy(tmp_path)
    result = run_make(project, target, os.environ["PATH"])
    assert_one_line(result, "no compose command", target)
    assert not (project / ".env").exists()


def assert_one_line(result: subprocess.CompletedProcess[str], reason: str, target: str) -> None:
    """Exit non-zero; stderr is the one `[compose] error:` line and make's own `***` line."""
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    ours = [line for line in lines if not line.startswith("make: *** [Makefile:")]
    assert len(ours) == 1, result.stderr
    assert ours[0].startswith("[compose] error: ") and reason in ours[0], ours[0]
    assert "make run-image" in ours[0], "the line names the way without compose"
    assert len(lines) == 2 and f"{target}] Error 1" in lines[1], result.stderr
