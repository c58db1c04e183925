"""What a scenario published against what the ledger holds, and its figures line.

Every scenario states the signals it published as `(user_id, idempotency key) -> agents`
and `measure` compares that with the rows: an expected (signal, agent) pair without an
execution is *lost*, a second row for a pair (or a second signal row for a key) is
*duplicated*, a pair nobody asked for is *unexpected*. The fault suite's `report` fixture
prints one figures line per scenario and repeats them all at the end of the run.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import asyncpg
import pytest

from worker.db.ledger import Violation, find_violations

EXECUTIONS = "SELECT count(*) FROM signal_executions"


FIGURES = pytest.StashKey[list[str]]()


Report = Callable[..., None]


def seeded(name: str) -> tuple[int, random.Random]:
    """A random seed for `name`, or `FAULTS_SEED`'s: printed with the figures, to replay."""
    given = os.environ.get("FAULTS_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    return seed, random.Random(f"{name}:{seed}")


@dataclass(frozen=True)
class Ledger:
    """What the database holds against what the scenario published."""

    executions: int
    lost: int
    duplicated: int
    unexpected: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def check(self) -> str:
        """`find_violations` in a few words, for the figures line."""
        if not self.violations:
            return "ok"
        return f"{len(self.violations)} violations, first: {self.violations[0].message}"

    @property
    def figures(self) -> dict[str, object]:
        """The ledger's part of a `report` line: executions, lost, duplicated, check."""
        return {
            "executions": self.executions,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "check": self.check,
        }


Expected = Mapping[tuple[uuid.UUID, str], Iterable[uuid.UUID]]


EXECUTED_PAIRS = """
SELECT s.user_id, s.idempotency_key, e.agent_id
  FROM signal_executions e JOIN trading_signals s ON s.id = e.signal_id
"""


SIGNAL_KEYS = "SELECT user_id, idempotency_key FROM trading_signals"


async def measure(conn: asyncpg.Connection, expected: Expected) -> Ledger:
    """Count lost, duplicated and unexpected executions, and run the ledger invariants."""
    wanted = {(user, key, agent) for (user, key), agents in expected.items() for agent in agents}
    executed = await conn.fetch(EXECUTED_PAIRS)
    rows = Counter((r["user_id"], r["idempotency_key"], r["agent_id"]) for r in executed)
    signals = Counter((r["user_id"], r["idempotency_key"]) for r in await conn.fetch(SIGNAL_KEYS))
    return Ledger(
        executions=await conn.fetchval(EXECUTIONS),
        lost=len(wanted - rows.keys()),
        duplicated=sum(n - 1 for n in rows.values()) + sum(n - 1 for n in signals.values()),
        unexpected=len(rows.keys() - wanted),
        violations=await find_violations(conn),
    )


def assert_exactly_once(ledger: Ledger) -> None:
    """Nothing lost, nothing doubled, nothing invented, every invariant holds."""
    assert ledger.lost == 0, f"{ledger.lost} (signal, agent) pairs have no execution"
    assert ledger.duplicated == 0, f"{ledger.duplicated} duplicated executions or signals"
    assert ledger.unexpected == 0, f"{ledger.unexpected} executions nobody asked for"
    assert ledger.violations == [], "\n".join(v.message for v in ledger.violations)
