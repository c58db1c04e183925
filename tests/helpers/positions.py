"""Open positions for the exit rules' unit tests: 1000 tokens bought at 0.001 SOL each."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from worker.domain.models import PositionState

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
AVG = Decimal("0.001")


def make_position(**changes: Any) -> PositionState:
    """1000 tokens at `AVG` for 1.00001 SOL (fees in), opened at `T0`; `changes` by field."""
    position = PositionState(
        purchase_price=AVG,
        purchase_amount=Decimal(1000),
        total_invested_sol=Decimal("1.00001"),
        created_at=T0,
    )
    return dataclasses.replace(position, **changes)
