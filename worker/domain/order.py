"""The rank of a record among those decided at the same time (`worker.pipeline.timeline`):
prices first, SOL/USD before the token prices it converts, then signals, then commands.
Live and replay order by it alike."""

from __future__ import annotations

from worker.domain.models import SOL_MINT

RANK_SOL_TICK = 0
RANK_TICK = 1
RANK_SIGNAL = 2
RANK_COMMAND = 3  # a user's command after the user's signals of the same time
# Ranks from here on are a user's records (signals, commands): they touch only that user's
# rows, and wait only for the prices and the user's other topics' partition of the same
# number (`worker.pipeline.timeline`).
RANK_USER = RANK_SIGNAL


def tick_rank(token_address: str) -> int:
    """The rank of a tick of `token_address`."""
    return RANK_SOL_TICK if token_address == SOL_MINT else RANK_TICK
