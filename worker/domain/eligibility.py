"""Whether one agent buys on one signal, and how much (`contract.md` section 3).

Who is decided at all: the agents of the signal's user that existed when the signal was
made (`is_subscriber`); an agent created later has no execution for it, not even a
skipped one.

Rules, first match wins:

1. automated trading off for the agent's current `trading_mode` -> skipped
   (an unknown trading mode -> failed);
2. signal filters (`domain.md` section 3) -> skipped: strength below `minScore`, type not
   in a non-empty `allowedSignalTypes` (exact match), token on the blacklist or missing
   from the whitelist, a metric outside a set bound (inclusive) or missing while a bound
   on it is set;
3. `trading_mode` live -> failed (this worker only simulates);
4. no wallet for the mode -> failed;
5. already holding the token -> skipped; at `maxOpenPositions` -> skipped;
   SOL balance (unknown = 0) below `minimumAgentBalance` -> skipped;
6. no position size (`worker.domain.sizing`) -> failed; otherwise success with the size.

Reasons are one sentence naming the numbers. The source reports balance, position and
limit problems as FAILED and never writes SKIPPED; the contract classifies them as above.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from worker.domain.config import AgentTradingConfig, TokenFilterMode
from worker.domain.config_reading import ConfigReading
from worker.domain.models import Decision, ExecutionStatus, Signal, Subscriber
from worker.domain.money import ZERO, fmt
from worker.domain.sizing import SizingFailure, position_size

SIMULATION = "simulation"
LIVE = "live"


def skipped(reason: str) -> Decision:
    """The agent chose not to trade, for `reason`."""
    return Decision(ExecutionStatus.SKIPPED, reason)


def failed(reason: str) -> Decision:
    """The agent meant to trade and could not, for `reason`."""
    return Decision(ExecutionStatus.FAILED, reason)


def is_subscriber(agent_created_at: datetime | None, signal_created_at: datetime) -> bool:
    """Whether an agent is a subscriber of a signal: it was created at or before the
    signal's `created_at` (its event time: the message's, else its Kafka record's).

    Both times are stored (`agents.created_at`, `trading_signals.created_at`), so a
    redelivery, an offset reset, a new consumer group and a replay all decide the same
    agents for a signal, whenever they run: an agent created since is not offered the old
    signals (it did not exist; it gets no execution row, as the ledger never had it among
    the signal's agents). An agent of unknown creation time (None) was always there; one
    created long ago (a source's old row) gets every signal, as before.
    """
    return agent_created_at is None or agent_created_at <= signal_created_at


def decide(signal: Signal, agent: Subscriber, cfg: AgentTradingConfig, *, seed: bytes) -> Decision:
    """Skip, fail or buy (size in SOL) for one agent, with its validated config; pure."""
    return (
        _automation(agent)
        or _signal_filters(signal, cfg)
        or _wallet(agent)
        or _holdings(signal, agent, cfg)
        or _sized(agent, cfg, seed)
    )


def decide_agent(
    signal: Signal, agent: Subscriber, reading: ConfigReading, *, seed: bytes
) -> Decision:
    """`decide` with the agent's stored config as read (`read_config`); an invalid config
    -> failed with its reason.

    Automated trading is checked first: an agent that has it off is skipped whatever its
    config holds.
    """
    if reading.config is None:
        return _automation(agent) or failed(reading.error or "invalid trading_config")
    return decide(signal, agent, reading.config, seed=seed)


def _automation(agent: Subscriber) -> Decision | None:
    if agent.trading_mode == SIMULATION:
        is_on = agent.automated_trading_simulation
    elif agent.trading_mode == LIVE:
        is_on = agent.automated_trading_live
    else:
        return failed(f"trading mode {agent.trading_mode!r} is not supported")
    if not is_on:
        return skipped(f"automated trading is off for {agent.trading_mode} mode")
    return None


def _signal_filters(signal: Signal, cfg: AgentTradingConfig) -> Decision | None:
    filters = cfg.signals
    if signal.signal_strength < filters.min_score:
        return skipped(
            f"signal strength {signal.signal_strength} is below minScore {filters.min_score}"
        )
    allowed = filters.allowed_signal_types
    if allowed and signal.signal_type not in allowed:
        listed = ", ".join(repr(kind) for kind in allowed)
        return skipped(
            f"signal type {signal.signal_type!r} is not in allowedSignalTypes ({listed})"
        )
    token = signal.token_address
    if filters.token_filter_mode is TokenFilterMode.BLACKLIST and token in filters.token_list:
        return skipped(f"token {token} is on the agent's blacklist")
    if filters.token_filter_mode is TokenFilterMode.WHITELIST and token not in filters.token_list:
        return skipped(f"token {token} is not on the agent's whitelist")
    return _metric_bounds(signal, cfg)


def _metric_bounds(signal: Signal, cfg: AgentTradingConfig) -> Decision | None:
    filters = cfg.signals
    holders = None if signal.holder_count is None else Decimal(signal.holder_count)
    checks = (
        ("market cap", " USD", signal.market_cap_usd, "marketCap",
         filters.market_cap_min, filters.market_cap_max),
        ("liquidity", " USD", signal.liquidity_usd, "liquidity",
         filters.liquidity_min, filters.liquidity_max),
        ("holder count", "", holders, "holderCount",
         _as_decimal(filters.holder_count_min), _as_decimal(filters.holder_count_max)),
    )  # fmt: skip
    for label, unit, value, key, low, high in checks:
        if low is None and high is None:
            continue
        if value is None:
            bound = f"{key}Min" if low is not None else f"{key}Max"
            return skipped(f"the signal has no {label} but the agent sets {bound}")
        if low is not None and value < low:
            return skipped(f"{label} {fmt(value)}{unit} is below {key}Min {fmt(low)}")
        if high is not None and value > high:
            return skipped(f"{label} {fmt(value)}{unit} is above {key}Max {fmt(high)}")
    return None


def _as_decimal(value: int | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _wallet(agent: Subscriber) -> Decision | None:
    if agent.trading_mode == LIVE:
        return failed("live trading is not available in this worker")
    if agent.wallet_address is None:
        return failed(f"the agent has no {agent.trading_mode} wallet")
    return None


def _holdings(signal: Signal, agent: Subscriber, cfg: AgentTradingConfig) -> Decision | None:
    if agent.holds_token:
        return skipped(f"the agent already holds a position in token {signal.token_address}")
    limit = cfg.purchase_limits.max_open_positions
    if agent.open_positions >= limit:
        return skipped(
            f"the agent has {agent.open_positions} open positions, "
            f"at its maxOpenPositions limit of {limit}"
        )
    balance = agent.sol_balance if agent.sol_balance is not None else ZERO
    minimum = cfg.purchase_limits.minimum_agent_balance
    if balance < minimum:
        return skipped(f"SOL balance {fmt(balance)} is below minimumAgentBalance {fmt(minimum)}")
    return None


def _sized(agent: Subscriber, cfg: AgentTradingConfig, seed: bytes) -> Decision:
    balance = agent.sol_balance if agent.sol_balance is not None else ZERO
    size = position_size(balance, cfg, seed)
    if isinstance(size, SizingFailure):
        return failed(size.reason)
    return Decision(ExecutionStatus.SUCCESS, size_sol=size)
