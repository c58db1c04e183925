"""The import contracts themselves (`[tool.importlinter]` in pyproject.toml): each import
the layers forbid, added to a copy of the package, breaks a contract.

These are the imports that the earlier contracts let through (issue 21): the domain using
the settings, the metrics or logging; a handler using aiokafka; the replay's in-memory
store using the database pool; SQL calling back up into the Kafka side; a handler taking a
Kafka message type; the replay engine reading the database itself. `lint-imports` runs on
the copy with the project's own configuration, so a contract loosened in pyproject.toml
fails here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# (file of the copy, the import added to it, the contracts it must break)
FORBIDDEN = [
    ("domain/money.py", "import worker.settings", {"layers", "pure-domain"}),
    ("domain/exits.py", "from worker.metrics import Metrics", {"layers", "pure-domain"}),
    ("domain/planning.py", "import logging", {"pure-domain"}),
    ("handlers/signals.py", "import aiokafka", {"ports-only"}),
    ("replay/memory.py", "from worker.db.pool import connection", {"replay-in-memory"}),
    ("db/pool.py", "from worker.pipeline.failures import disposition", {"layers"}),
    ("handlers/ticks.py", "from worker.messages import PriceTickV1", {"layers", "ports-only"}),
    ("replay/engine.py", "from worker.db.replay import read_history", {"replay-in-memory"}),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package and of pyproject.toml, as committed."""
    base = tmp_path_factory.mktemp("contracts")
    shutil.copytree(
        ROOT / "worker", base / "worker", ignore=shutil.ignore_patterns("__pycache__", "*.sql")
    )
    shutil.copy(ROOT / "pyproject.toml", base / "pyproject.toml")
    return base


def lint_imports(tree: Path) -> tuple[int, str]:
    """Run import-linter over the copy in `tree` (its own folder first on the path, so the
    copy is the `worker` analysed, not the installed one)."""
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "pyproject.toml"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def broken(output: str) -> set[str]:
    """The ids of the contracts the output reports broken (each contract's name maps to its
    id through pyproject.toml's names)."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    flat = " ".join(output.split())
    return {c["id"] for c in contracts if f"{' '.join(c['name'].split())} BROKEN" in flat}


def test_the_package_as_it_is_keeps_every_contract(pristine: Path) -> None:
    code, output = lint_imports(pristine)
    assert code == 0, output
    assert broken(output) == set()


@pytest.mark.parametrize(
    ("path", "line", "contracts"), FORBIDDEN, ids=[f"{p}: {line}" for p, line, _ in FORBIDDEN]
)
def test_a_forbidden_import_breaks_its_contract(
    pristine: Path, tmp_path: Path, path: str, line: str, contracts: set[str]
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    target = tree / "worker" / path
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    code, output = lint_imports(tree)
    assert code != 0, output
    assert contracts <= broken(output), output
