"""The fault suite's fixtures: its figures lines and databases on its own services.

The helpers its scenarios use are in `tests/helpers/` (`ledger` measures what the database
holds against what a scenario published; `books`, `kafka`, `workers` build and run it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers.db import create_database, create_template, drop_database
from tests.helpers.ledger import FIGURES, Report
from tests.helpers.services import OwnServices


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Repeat every scenario's figures line at the end of the run (and of the CI log)."""
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("fault scenarios")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """`report(scenario, **figures)`: print one figures line and keep it for the summary."""
    lines = request.config.stash.setdefault(FIGURES, [])

    def _report(scenario: str, **figures: object) -> None:
        line = f"[faults] {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
        print(line)
        lines.append(line)

    return _report


@pytest.fixture(scope="session")
async def own_template(own_services: OwnServices) -> AsyncIterator[str]:
    """A migrated template database on the fault suite's own PostgreSQL."""
    name = await create_template(own_services.services)
    yield name
    own_services.start("postgres")  # a failed scenario may have left it stopped
    await drop_database(own_services.services, own_services.services.with_database(name))


@pytest.fixture
async def own_db_url(own_services: OwnServices, own_template: str) -> AsyncIterator[str]:
    """A fresh database of this test's own on the fault suite's own PostgreSQL."""
    url = await create_database(own_services.services, own_template)
    yield url
    own_services.start("postgres")
    own_services.start("kafka")
    await drop_database(own_services.services, url)
