"""The wheel carries everything the worker needs: installed alone, it migrates a database.

The wheel is built from a copy of what the Dockerfile copies (pyproject.toml, README.md,
worker/), installed with the locked dependencies into a fresh virtual environment, and run
from a folder outside the repository, so nothing can come from the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.containers.conftest import ROOT, migration_names
from tests.helpers.db import connected

pytestmark = [pytest.mark.containers, pytest.mark.timeout(300)]

UV = Path(sys.executable).with_name("uv")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built (no network, the build lock's setuptools) from a copy of the sources."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "worker", source / "worker", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path_factory.mktemp("dist")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        dist,
        source,
        cwd=source,
    )
    (built,) = dist.glob("signal_worker-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the locked dependencies and the wheel, nothing else."""
    target = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", target, cwd=target.parent)
    python = target / "bin" / "python"
    # uv: the same hash-checked install as the image's pip, from uv's cache after the first run.
    run(UV, "pip", "install", "--quiet", "--python", python, "--require-hashes",
        "-r", ROOT / "requirements.lock", cwd=target.parent)  # fmt: skip
    run(UV, "pip", "install", "--quiet", "--python", python, "--no-deps", wheel,
        cwd=target.parent)  # fmt: skip
    return target


def outside_env(db_url: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, nothing of the tests."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST", "PYTHON", "VIRTUAL_ENV")) and k != "PATH"
    }
    env.update(PATH="/usr/bin:/bin", DATABASE_URL=db_url, LOG_FORMAT="json")
    return env


def test_the_wheel_holds_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        packaged = sorted(
            Path(name).name for name in archive.namelist() if name.startswith("worker/schema/")
        )
    assert packaged == list(migration_names())


async def test_the_installed_wheel_migrates_a_fresh_database(
    venv: Path, empty_db: str, tmp_path: Path
) -> None:
    bin_dir = venv / "bin"
    env = outside_env(empty_db)

    where = run(bin_dir / "python", "-c", "import worker; print(worker.__file__)", cwd=tmp_path)
    version = run(bin_dir / "signal-worker", "--version", cwd=tmp_path)
    dry_run = run(bin_dir / "signal-worker", "migrate", "--dry-run", cwd=tmp_path, env=env)
    run(bin_dir / "signal-worker", "migrate", cwd=tmp_path, env=env)

    assert Path(where.strip()).is_relative_to(venv), where
    assert version.strip() == "signal-worker 0.1.0"
    for name in migration_names():
        assert f"would apply {name}" in dry_run
    async with connected(empty_db) as conn:
        applied = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
    assert sorted(applied) == list(migration_names())
