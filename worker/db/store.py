"""The one store on asyncpg: every db module's query class on one connection.

`PgStore(conn)` implements both ports of `worker.ports` (`SignalStore` for the signal
handler, `PriceStore` for ticks) and the few reads the shell makes (agent counts, stored
configs, prices for the demo). Its methods are the db modules' own (`AgentQueries`,
`SignalQueries`, `PriceQueries`, `TradeWrites`, `PositionQueries`), so there is no layer
of forwarding in between; the statements run inside the caller's transaction on `conn`.
"""

from __future__ import annotations

from worker.db.agents import AgentQueries
from worker.db.commands import CommandQueries
from worker.db.positions import PositionQueries
from worker.db.prices import PriceQueries
from worker.db.signals import SignalQueries
from worker.db.trades import TradeWrites


class PgStore(
    AgentQueries, SignalQueries, PriceQueries, TradeWrites, PositionQueries, CommandQueries
):
    """All of the worker's statements on one connection (see the module's docstring)."""

    __slots__ = ()
