"""The rank of a record among those decided at the same time (`worker.pipeline.timeline`):
prices first, SOL/USD before the token prices it converts, then signals. Live and replay
order by it alike."""

from __future__ import annotations

from worker.domain.models import SOL_MINT

RANK_SOL_TICK = 0
RANK_TICK = 1
RANK_SIGNAL = 2


def tick_rank(token_address: str) -> int:
    """The rank of a tick of `token_address`."""
    return RANK_SOL_TICK if token_address == SOL_MINT else RANK_TICK
