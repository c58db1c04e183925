"""Position size of a buy, in SOL, from the wallet's SOL balance (`domain.md` section 5).

Tier by balance (large if >= thresholds.large, medium if >= thresholds.medium, else small);
a size in the tier's [min, max) when randomization is on, else its max; capped at
`maxPurchasePerToken`; reduced so that `minimumAgentBalance` SOL stays in the wallet.

The source draws the size with `Math.random()`. Here the draw is a pure function of a
seed (`sizing_seed(user_id, idempotency_key, agent_id)`): the signal's natural key and the
agent, so a redelivery, a replay, or a fresh run of the same input (whatever order its
signals are stored in) sizes the same trade.

The balance is SOL, however large: the source read a balance above 1e6 as lamports (a
guess at its unit), refusing the buys of a wallet holding more than a million SOL; this
worker's balances are always written in SOL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from uuid import UUID

from worker.domain.config import AgentTradingConfig, PositionSizeRange
from worker.domain.money import SOL_PLACES, ZERO, div, exact, fmt, quantize, to_sol

SOL_STEP = Decimal(1).scaleb(-SOL_PLACES)


@dataclass(frozen=True, slots=True)
class SizingFailure:
    """Why no size could be found, as one sentence naming the numbers."""

    reason: str


def sizing_seed(user_id: UUID, idempotency_key: str, agent_id: UUID) -> bytes:
    """The seed of the size draw for one agent on the signal (user, idempotency key), the
    signal's natural key (unique per the contract): the same across processes, crashes,
    redeliveries, replays and fresh runs of the same input. Not the serial
    `trading_signals.id`, which insertion order (fetch sizes, workers) decides. (v2: v1
    seeded by that serial id.) The key comes last: the UUIDs have a fixed length, so no two
    different triples give one seed."""
    return f"signal-worker/sizing/v2/{user_id}/{agent_id}/{idempotency_key}".encode()


@exact
def draw_in_range(low: Decimal, high: Decimal, seed: bytes) -> Decimal:
    """A SOL amount on the 1e-8 grid in [low, high), uniform and determined by `seed`.

    When no grid point lies in [low, high) (low == high, or closer than 1e-8), the result
    is `high` rounded down to 1e-8, as the source's `low + random * (high - low)` is then
    `low` == `high`.
    """
    first = quantize(low, SOL_PLACES, rounding=ROUND_CEILING)
    if high <= first:
        return to_sol(high)
    steps = int(div(high - first, SOL_STEP).to_integral_value(rounding=ROUND_CEILING))
    index = int.from_bytes(hashlib.sha256(seed).digest(), "big") % steps
    return first + index * SOL_STEP


def tier_range(balance_sol: Decimal, cfg: AgentTradingConfig) -> PositionSizeRange:
    """The size range of the tier that a SOL balance falls in."""
    calculator = cfg.position_calculator
    thresholds = calculator.sol_balance_thresholds
    if balance_sol >= thresholds.large:
        return calculator.position_sizes.large
    if balance_sol >= thresholds.medium:
        return calculator.position_sizes.medium
    return calculator.position_sizes.small


@exact
def position_size(
    balance_sol: Decimal, cfg: AgentTradingConfig, seed: bytes
) -> Decimal | SizingFailure:
    """The SOL to swap for a buy (8 places, > 0), or why there is none; deterministic per seed."""
    thresholds = cfg.position_calculator.sol_balance_thresholds
    if balance_sol < thresholds.minimum:
        return SizingFailure(
            f"SOL balance {fmt(balance_sol)} is below the position calculator's "
            f"minimum balance {fmt(thresholds.minimum)}"
        )
    tier = tier_range(balance_sol, cfg)
    if cfg.position_calculator.randomization.enabled:
        size = draw_in_range(tier.min, tier.max, seed)
    else:
        size = to_sol(tier.max)
    size = min(size, to_sol(cfg.purchase_limits.max_purchase_per_token))
    keep = cfg.purchase_limits.minimum_agent_balance
    if balance_sol - size < keep:
        size = to_sol(min(balance_sol - keep, size))
        if size <= ZERO:
            return SizingFailure(
                f"SOL balance {fmt(balance_sol)} leaves nothing to buy with "
                f"above minimumAgentBalance {fmt(keep)}"
            )
    if size <= ZERO:
        return SizingFailure(f"the position size for SOL balance {fmt(balance_sol)} is 0 SOL")
    return size
