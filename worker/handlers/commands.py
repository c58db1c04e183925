"""What a user's commands do: users, agents, configs, switches, simulation SOL, manual closes.

Runs inside the consumer's transaction (with the partitions' offsets), through a
`worker.ports.CommandStore` bound to it, like the signals and ticks: a command's effects,
its result row (`command_results`) and its offset are committed together, exactly once.
A command already recorded under its (user, idempotency key) changes nothing again.

Each command is decided at its decision time (`at`, its place in the one order: after the
ticks and signals before it, `worker.pipeline.timeline`), and every time written on its rows
is `at`: an agent created by command is created at `at` (so a signal decided before it is
not the agent's, one after it is), a config change is in force from `at`
(`agent_config_history`), a manual close sells at the latest price stored as of `at` (the
ticks decided before the command). Never the wall clock: the same stream gives the same rows.

Choices where the issue left them open:
- `pause`/`resume` take a mode (`simulation`, `live`, `all`; default `all`): pausing stops new
  buys and automated exits of that mode (the schema's switches), never a manual close.
- `close_positions` without a token closes every open simulation position of the agent that
  has a price; positions in tokens without a price are kept and listed in the result
  (`kept`); refused only when none could be closed.
- `rename_agent` as the extra command a user would miss; agents are not deleted by command
  (deleting erases their history, which a replay needs).
- A command for an agent of another user is refused as an unknown agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from worker.domain.commands import (
    AgentState,
    Command,
    Outcome,
    Transfer,
    check_config,
    mode_switches,
    refused,
    same_command,
)
from worker.domain.config import InvalidConfig
from worker.domain.config_reading import OversizedConfig, decode_json
from worker.domain.exact_json import dumps_exact, merge_patch
from worker.domain.exits import full_exit_pnl
from worker.domain.fills import Fees, sell_fill
from worker.domain.ids import command_id, simulation_wallet_address
from worker.domain.ledger import SwapOwner, sale_rows
from worker.domain.models import SOL_MINT, CloseReason
from worker.domain.money import to_sol
from worker.domain.records import ClosedPosition
from worker.domain.storable import trade_misfit
from worker.ports import CommandStore, PriceStore
from worker.settings import TradingSettings

# What a numeric(20,8) USD value and a numeric(30,18) balance hold.
USD_BELOW = Decimal("1e12")
BALANCE_BELOW = Decimal("1e12")


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What came of a command; `duplicate` when it had been applied (or refused) before;
    `reused` when that was another command under the same key (`stored`: its name), which
    the result row keeps (nothing of this one is done)."""

    command: str
    outcome: Outcome
    duplicate: bool = False
    reused: bool = False
    stored: str | None = None


async def handle_commands(
    store: CommandStore, commands: Sequence[Command], *, trading: TradingSettings
) -> list[CommandResult]:
    """Apply each command in order, recording its result; one result per command."""
    results = []
    for item in commands:
        await store.lock_command(item.user_id, item.key)
        stored = await store.command_result(item.user_id, item.key)
        if stored is not None:
            outcome = Outcome(reason=stored["reason"])
            reused = not same_command(stored["command"], stored["payload"], item.kind, item.payload)
            results.append(
                CommandResult(item.kind, outcome, True, reused=reused, stored=stored["command"])
            )
            continue
        outcome = await _apply(store, item, trading)
        await store.insert_command_result(
            user_id=item.user_id,
            key=item.key,
            command=item.kind,
            status=outcome.status,
            reason=outcome.reason,
            agent_id=outcome.agent_id or item.agent_id,
            payload=item.payload,
            changes=None if outcome.reason is not None else dumps_exact(outcome.changes),
            at=item.at,
            record=item.record,
        )
        results.append(CommandResult(item.kind, outcome))
    return results


async def _apply(store: CommandStore, message: Command, trading: TradingSettings) -> Outcome:
    if message.kind == "create_user":
        return await _create_user(store, message, message.at)
    if not await store.user_exists(message.user_id):
        return refused(f"no user {message.user_id}: create it first (create_user)")
    if message.kind == "create_agent":
        return await _create_agent(store, message, trading)
    assert message.agent_id is not None  # noqa: S101 - every other command names its agent
    agent = await store.agent_state(message.agent_id, trading.max_config_bytes)
    if agent is None or agent.user_id != message.user_id:
        return refused(f"no agent {message.agent_id} of user {message.user_id}")
    if agent.created_at > message.at:
        return refused(
            f"agent {agent.id} was created at {agent.created_at.isoformat()}, after this "
            f"command's time {message.at.isoformat()}",
            agent.id,
        )
    outcome = await _on_agent(store, message, agent, trading)
    outcome.agent_id = agent.id
    return outcome


async def _on_agent(
    store: CommandStore,
    message: Command,
    agent: AgentState,
    trading: TradingSettings,
) -> Outcome:
    at = message.at
    if message.kind == "rename_agent":
        await store.update_agent(agent.id, at, name=message.name)
        return Outcome(changes={"name": message.name, "was": agent.name})
    if message.kind in ("replace_config", "patch_config"):
        return await _set_config(store, message, agent, at, trading)
    if message.kind in ("pause", "resume"):
        on = message.kind == "resume"
        simulation, live = mode_switches(message.mode, on)
        await store.update_agent(agent.id, at, automated_simulation=simulation, automated_live=live)
        return Outcome(
            changes={
                "automated_trading_simulation": (
                    agent.automated_trading_simulation if simulation is None else simulation
                ),
                "automated_trading_live": agent.automated_trading_live if live is None else live,
            }
        )
    if message.kind in ("deposit", "withdraw"):
        return await _transfer(store, message, agent)
    if message.kind == "close_positions":
        return await _close(store, message, agent, trading)
    return refused(f"command {message.kind} does not apply to an agent")  # pragma: no cover


async def _create_user(store: CommandStore, message: Command, at: datetime) -> Outcome:
    if await store.user_exists(message.user_id):
        return refused(f"user {message.user_id} exists already")
    assert message.email is not None  # noqa: S101 - the model requires it
    if await store.email_taken(message.email):
        return refused(f"another user has the email {message.email!r}")
    if not await store.insert_user(message.user_id, message.email, at):
        # Taken between the checks and the insert, by a writer that committed meanwhile.
        return refused(
            f"user {message.user_id} exists already or another user has the email "
            f"{message.email!r} (made meanwhile by another writer)"
        )
    return Outcome(changes={"user_id": str(message.user_id), "email": message.email})


async def _create_agent(store: CommandStore, message: Command, trading: TradingSettings) -> Outcome:
    agent_id = message.agent_id or command_id(message.user_id, message.key, "agent")
    if await store.agent_exists(agent_id):
        return refused(f"agent {agent_id} exists already", agent_id)
    checked = check_config(message.config, trading.max_config_bytes)
    if checked.error is not None:
        return refused(checked.error, agent_id)
    wallet = simulation_wallet_address(agent_id)
    if await store.wallet_taken(wallet):  # pragma: no cover - 160 bits of a hash
        return refused(f"the wallet address {wallet} is taken", agent_id)
    assert message.name is not None  # noqa: S101 - the model requires it
    sol = message.amount
    # Priced before anything is written: a refusal changes nothing.
    sol_usd = await _sol_usd(store) if sol is not None else Decimal(0)
    value = _usd(sol, sol_usd) if sol is not None else Decimal(0)
    if value is None:
        return refused(f"a deposit of {sol} SOL is worth more than a row holds", agent_id)
    await store.insert_agent(
        agent_id=agent_id,
        user_id=message.user_id,
        name=message.name,
        trading_mode=message.trading_mode,
        config_text=checked.text,
        wallet=wallet,
        balance_id=command_id(message.user_id, message.key, "balance"),
        at=message.at,
    )
    changes: dict[str, Any] = {
        "agent_id": str(agent_id),
        "name": message.name,
        "trading_mode": message.trading_mode,
        "wallet_address": wallet,
        "config": "given" if message.config is not None else "defaults",
    }
    if checked.unknown_keys:
        changes["unknown_keys"] = list(checked.unknown_keys)
    if sol is not None:
        transfer = Transfer(
            command_id(message.user_id, message.key, "deposit"), agent_id, wallet, "DEPOSIT",
            sol, message.at, value, sol_usd,
        )  # fmt: skip
        await store.insert_transfer(transfer, command_id(message.user_id, message.key, "balance"))
        changes["deposit_sol"] = sol
        changes["balance_sol"] = sol
    return Outcome(changes=changes, agent_id=agent_id)


async def _set_config(
    store: CommandStore,
    message: Command,
    agent: AgentState,
    at: datetime,
    trading: TradingSettings,
) -> Outcome:
    if message.kind == "replace_config":
        new = message.config
    else:
        if isinstance(agent.config_text, OversizedConfig):
            return refused(f"{agent.config_text.reason}: replace it whole (replace_config)")
        try:
            stored = decode_json(agent.config_text)
        except InvalidConfig as exc:
            return refused(f"{exc}: replace it whole (replace_config)")
        patched = merge_patch(stored if isinstance(stored, dict) else {}, message.patch or {})
        assert isinstance(patched, dict)  # noqa: S101 - an object patch gives an object
        new = patched
    checked = check_config(new, trading.max_config_bytes)
    if checked.error is not None:
        return refused(checked.error)
    await store.update_agent(agent.id, at, config_text=checked.text, set_config=True)
    changes: dict[str, Any] = {"config_bytes": len(checked.text.encode())}
    if message.patch is not None:
        changes["patched_keys"] = sorted(message.patch)
    if checked.unknown_keys:
        changes["unknown_keys"] = list(checked.unknown_keys)
    return Outcome(changes=changes)


async def _transfer(store: CommandStore, message: Command, agent: AgentState) -> Outcome:
    wallet = agent.wallet_address
    if wallet is None:
        return refused(f"agent {agent.id} has no simulation wallet")
    balance = await store.lock_sol(wallet) or Decimal(0)
    amount = message.amount
    assert amount is not None  # noqa: S101 - the models require it
    deposit = message.kind == "deposit"
    if deposit and balance + amount >= BALANCE_BELOW:
        return refused(
            f"a deposit of {amount} SOL would take the balance of {balance} SOL beyond what "
            "a balance holds"
        )
    if not deposit and amount > balance:
        return refused(
            f"a withdrawal of {amount} SOL exceeds the balance of {balance} SOL (a balance "
            "never goes below zero)"
        )
    sol_usd = await _sol_usd(store)
    value = _usd(amount, sol_usd)
    if value is None:
        return refused(f"{amount} SOL is worth more than a transaction row holds")
    kind = "DEPOSIT" if deposit else "WITHDRAWAL"
    what = "deposit" if deposit else "withdrawal"
    key = message.user_id, message.key
    transfer = Transfer(
        command_id(*key, what), agent.id, wallet, kind, amount, message.at, value, sol_usd
    )
    await store.insert_transfer(transfer, command_id(*key, "balance"))
    after = balance + amount if deposit else balance - amount
    return Outcome(changes={f"{what}_sol": amount, "balance_sol": after})


async def _close(
    store: CommandStore,
    message: Command,
    agent: AgentState,
    trading: TradingSettings,
) -> Outcome:
    wallet = agent.wallet_address
    if wallet is None:
        return refused(f"agent {agent.id} has no simulation wallet")
    token = message.token_address
    held = await store.open_positions_of(agent.id, token)
    if not held:
        return refused(
            f"agent {agent.id} has no open position in {token}"
            if token
            else f"agent {agent.id} has no open positions"
        )
    sold = await sell_by_hand(
        store,
        held,
        wallet,
        user_id=message.user_id,
        key=message.key,
        at=message.at,
        fees=trading.fees,
    )
    if isinstance(sold, str):
        return refused(sold)
    out, kept = sold
    changes: dict[str, Any] = {"closed": out}
    if kept:
        changes["kept"] = kept
    return Outcome(changes=changes)


async def sell_by_hand(
    store: PriceStore,
    held: Sequence[tuple[UUID, str]],
    wallet: str,
    *,
    user_id: UUID,
    key: str,
    at: datetime,
    fees: Fees,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]] | str:
    """Close the positions `held` ((id, token), of one wallet) at the latest prices stored:
    each sold whole for SOL and recorded as a full exit with close reason `manual`, its
    sale named by the command (user, key) and the position. Returns what was closed and
    what was kept (no price, or a sale too small), or the reason when nothing could be
    (live: `close_positions`; replay: the same command read back)."""
    tokens = sorted({t for _, t in held})
    prices = await store.latest_prices([*tokens, SOL_MINT])
    if SOL_MINT not in prices:
        return "no SOL/USD price yet: a close is priced in SOL"
    sol_usd = prices[SOL_MINT][0]
    kept: list[dict[str, str]] = [
        {"token": t, "reason": "no price for the token yet"} for t in tokens if t not in prices
    ]
    await store.lock_wallets_sol([wallet])
    positions = await store.lock_positions([pid for pid, t in held if t in prices])
    closed: list[ClosedPosition] = []
    out: list[dict[str, Any]] = []
    # The wallet's SOL as each sale leaves it (the rows must fit their columns, as for an
    # exit on a tick: `trade_misfit`).
    sol = positions[0].sol_balance if positions else None
    for p in positions:
        token_usd = prices[p.token_address][0]
        fill = sell_fill(
            p.state.held_amount,
            token_usd,
            sol_usd,
            network_fee_sol=fees.network_fee_sol,
            protocol_fee_bps=fees.protocol_fee_bps,
        )
        if fill.rejection is not None:
            kept.append({"token": p.token_address, "reason": fill.rejection})
            continue
        tx_id = command_id(user_id, key, f"manual:{p.id}")
        owner = SwapOwner(
            p.agent_id, p.wallet_address, p.token_address, p.token_symbol, p.signal_id, p.id
        )
        swap, deltas = sale_rows(tx_id, owner, fill, at, is_take_profit=False)
        pnl = full_exit_pnl(p.state, fill.credit_sol, sol_usd)
        after = None if sol is None else sol + fill.credit_sol
        problem = trade_misfit([swap], exit_pnl=pnl, sol_balance=after)
        if problem is not None:
            kept.append({"token": p.token_address, "reason": problem})
            continue
        sol = after
        await store.insert_swaps([swap])
        await store.apply_balance_deltas(deltas)
        closed.append(ClosedPosition(p, pnl, tx_id, CloseReason.MANUAL, at))
        out.append(
            {
                "position_id": str(p.id),
                "token": p.token_address,
                "sold": fill.token_amount,
                "price_usd": token_usd,
                "credit_sol": fill.credit_sol,
                "profit_loss_sol": pnl.profit_loss_sol,
            }
        )
    if not closed:
        reasons = "; ".join(f"{k['token']}: {k['reason']}" for k in kept)
        return f"no position could be closed ({reasons})"
    await store.close_positions(closed)
    return out, kept


async def _sol_usd(store: CommandStore) -> Decimal:
    """The latest SOL/USD price stored, else 0 (a transfer's USD value is then 0, as the
    contract allows)."""
    prices = await store.latest_prices([SOL_MINT])
    return prices[SOL_MINT][0] if SOL_MINT in prices else Decimal(0)


def _usd(amount: Decimal, sol_usd: Decimal) -> Decimal | None:
    """`amount` SOL in USD, to a numeric(20,8)'s places; None when beyond it."""
    value = to_sol(amount * sol_usd)
    return value if value < USD_BELOW else None
