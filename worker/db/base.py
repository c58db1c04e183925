"""The base of the db modules' query classes: statements on one connection, no transactions.

Each db module declares its statements and one class of methods over them (`AgentQueries`,
`SignalQueries`, ...); `worker.db.store.PgStore` is all of them on one connection, the one
store the handlers' ports (`worker.ports`) are implemented by. The caller owns the
transaction; these never open one.
"""

from __future__ import annotations

import asyncpg


class OnConnection:
    """Statements that run on `conn`, inside whatever transaction its owner opened."""

    __slots__ = ("conn",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
