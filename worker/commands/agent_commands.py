"""`signal-worker users create`, `agents create | list | show | config | pause | resume | fund
| withdraw | rename` (and `lint`, `worker.commands.agents`) and `positions close`.

The commands that change something publish a command to COMMANDS_TOPIC and wait for its
result (`worker.commands.command_client`): the worker applies it in the user's one order of
commands and signals, exactly once, and records it in `command_results`; nothing here
writes to the database. A command on an agent is keyed by the agent's user, read from
`agents` first (an unknown agent is refused here, exit 2). `list` and `show` only read.

Choices made here:
- `users create` without `--user-id` makes a random id and prints it; `agents create`
  without `--agent-id` leaves the id to the worker (derived from the user and the key, so
  a re-run with the same `--key` is the same agent), and the applied line prints it.
- `agents show --config` prints the stored config deep-merged over the defaults
  (`DEFAULT_TRADING_CONFIG`, `deep_merge`: what the worker validates and uses), numbers
  written exactly as JSON numbers (the defaults' decimal strings too), keys the worker
  ignores kept, so the output can be edited and passed back with `agents config --set`.
- Amounts are sent as typed (`"1.5"`) and held to the wire model's rules (SOL: > 0, 18
  places), so `fund`, `withdraw` and `--sol` refuse what the worker would.
"""

from __future__ import annotations

import argparse
import json
import shlex
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from worker.commands import agents as lint
from worker.commands.command_client import (
    Outgoing,
    encode,
    new_key,
    read_json_object,
    send,
)
from worker.commands.text import printable
from worker.db.agent_listing import AgentListing, AgentOwner, agent_config, agent_owner, list_agents
from worker.db.pool import connect_migrated
from worker.domain.config import DEFAULT_TRADING_CONFIG, deep_merge
from worker.domain.config_reading import OversizedConfig, read_config
from worker.domain.exact_json import JsonRefusedError, dumps_exact, loads_exact
from worker.domain.money import fmt
from worker.errors import UsageError, WorkerError
from worker.settings import Settings

Fields = dict[str, Any]


def read_text_file(path: str, what: str) -> str:
    """A UTF-8 file's text; `UsageError` naming `what` when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from exc


def _json_file(path: str, what: str) -> dict[str, Any]:
    return read_json_object(read_text_file(path, what), f"{what} {path}")


def _again(key: str, *extra: str) -> str:
    return "run it again with " + shlex.join([*extra, "--key", key])


# ---------------------------------------------------------------- building the messages


def create_user(args: argparse.Namespace) -> Outgoing:
    """`users create`: a create_user command (a new random user id unless given)."""
    user_id = args.user_id or uuid.uuid4()
    key = args.key or new_key()
    message = {
        "command": "create_user",
        "user_id": str(user_id),
        "idempotency_key": key,
        "email": args.email,
    }
    return encode(message, subject=f"user {user_id}", again=_again(key, "--user-id", str(user_id)))


def create_agent(args: argparse.Namespace) -> Outgoing:
    """`agents create`: a create_agent command; no config = the worker's complete default."""
    key = args.key or new_key()
    message: Fields = {
        "command": "create_agent",
        "user_id": str(args.user),
        "idempotency_key": key,
        "name": args.name,
        "trading_mode": args.mode,
    }
    if args.agent_id is not None:
        message["agent_id"] = str(args.agent_id)
    if args.config is not None:
        message["config"] = _json_file(args.config, "--config")
    if args.sol is not None:
        message["sol"] = args.sol
    return encode(message, subject=f"user {args.user}", again=_again(key))


def _config_fields(args: argparse.Namespace) -> Fields:
    if args.set is not None:
        return {"command": "replace_config", "config": _json_file(args.set, "--set")}
    patch: str = args.patch
    if patch.startswith("@"):
        return {"command": "patch_config", "patch": _json_file(patch[1:], "--patch")}
    return {"command": "patch_config", "patch": read_json_object(patch, "--patch")}


def _switch_fields(command: str) -> Callable[[argparse.Namespace], Fields]:
    return lambda args: {"command": command, "mode": args.mode}


def _amount_fields(command: str) -> Callable[[argparse.Namespace], Fields]:
    return lambda args: {"command": command, "amount": args.amount}


def _close_fields(args: argparse.Namespace) -> Fields:
    fields: Fields = {"command": "close_positions"}
    if args.token is not None:
        fields["token_address"] = args.token
    return fields


# The fields of each agent action's command (besides user, agent and key).
AGENT_FIELDS: dict[str, Callable[[argparse.Namespace], Fields]] = {
    "config": _config_fields,
    "pause": _switch_fields("pause"),
    "resume": _switch_fields("resume"),
    "fund": _amount_fields("deposit"),
    "withdraw": _amount_fields("withdraw"),
    "rename": lambda args: {"command": "rename_agent", "name": args.name},
    "close": _close_fields,
}


def agent_command(args: argparse.Namespace, action: str, owner: AgentOwner) -> Outgoing:
    """The command of an agent action (`fund`, `pause`, ..., `close`), keyed by its user."""
    key = args.key or new_key()
    message = {
        **AGENT_FIELDS[action](args),
        "user_id": str(owner.user_id),
        "agent_id": str(owner.agent_id),
        "idempotency_key": key,
    }
    subject = f"agent {owner.agent_id} ({owner.name})"
    return encode(message, subject=subject, again=_again(key))


# ----------------------------------------------------------------------- running them


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """`agents ACTION`."""
    action: str = args.agents_command
    if action == "lint":
        return await lint.run(settings, args)
    if action == "list":
        return await _list(settings, args)
    if action == "show":
        return await _show(settings, args)
    if action == "create":
        outgoing = create_agent(args)
        return await _send(settings, args, outgoing)
    return await _on_agent(settings, args, action)


async def run_users(settings: Settings, args: argparse.Namespace) -> int:
    """`users create`."""
    return await _send(settings, args, create_user(args))


async def run_positions(settings: Settings, args: argparse.Namespace) -> int:
    """`positions close`."""
    return await _on_agent(settings, args, args.positions_command)


async def _send(settings: Settings, args: argparse.Namespace, outgoing: Outgoing) -> int:
    if args.no_wait:
        return await send(settings, outgoing, conn=None, timeout_s=args.timeout)
    conn = await _connect(settings)
    try:
        return await send(settings, outgoing, conn=conn, timeout_s=args.timeout)
    finally:
        await conn.close()


async def _on_agent(settings: Settings, args: argparse.Namespace, action: str) -> int:
    conn = await _connect(settings)
    try:
        owner = await _owner(conn, args.agent)
        outgoing = agent_command(args, action, owner)
        wait_on = None if args.no_wait else conn
        return await send(settings, outgoing, conn=wait_on, timeout_s=args.timeout)
    finally:
        await conn.close()


async def _connect(settings: Settings) -> asyncpg.Connection:
    return await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)


async def _owner(conn: asyncpg.Connection, agent_id: uuid.UUID) -> AgentOwner:
    owner = await agent_owner(conn, agent_id)
    if owner is None:
        raise UsageError(f"no agent {agent_id} in the database (see `signal-worker agents list`)")
    return owner


# --------------------------------------------------------------------------- list, show


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    conn = await _connect(settings)
    try:
        rows = await list_agents(conn, user_id=args.user)
    finally:
        await conn.close()
    print(render_agents(rows, args.format))
    return 0


LIST_COLUMNS = ("agent", "user", "name", "mode", "simulation", "live", "SOL", "open")


def _switch(on: bool) -> str:
    return "on" if on else "paused"


def _sol(value: Decimal | None) -> str | None:
    return None if value is None else fmt(value)


def agent_dict(a: AgentListing) -> dict[str, object]:
    """JSON-ready: ids as text, SOL as an exact decimal string (None without a wallet)."""
    return {
        "agent_id": str(a.agent_id),
        "user_id": str(a.user_id),
        "name": a.name,
        "trading_mode": a.trading_mode,
        "automated_trading_simulation": a.automated_trading_simulation,
        "automated_trading_live": a.automated_trading_live,
        "sol_balance": _sol(a.sol_balance),
        "open_positions": a.open_positions,
        "created_at": a.created_at.isoformat(),
    }


def render_agents(rows: list[AgentListing], output: str) -> str:
    """The agents as a table (names with control characters escaped) or JSON."""
    if output == "json":
        return json.dumps([agent_dict(a) for a in rows], indent=2, ensure_ascii=False)
    lines = [LIST_COLUMNS]
    lines.extend(
        (
            str(a.agent_id),
            str(a.user_id),
            printable(a.name),
            a.trading_mode,
            _switch(a.automated_trading_simulation),
            _switch(a.automated_trading_live),
            _sol(a.sol_balance) or "-",
            str(a.open_positions),
        )
        for a in rows
    )
    widths = [max(len(line[i]) for line in lines) for i in range(len(LIST_COLUMNS))]
    right = {"SOL", "open"}
    return "\n".join(
        "  ".join(
            cell.rjust(w) if name in right else cell.ljust(w)
            for name, cell, w in zip(LIST_COLUMNS, line, widths, strict=True)
        ).rstrip()
        for line in lines
    )


async def _show(settings: Settings, args: argparse.Namespace) -> int:
    conn = await _connect(settings)
    try:
        await _owner(conn, args.agent)
        [listing] = await list_agents(conn, agent_id=args.agent)
        stored = await agent_config(conn, args.agent, settings.agent_config_max_bytes)
    finally:
        await conn.close()
    if args.config:
        print(pretty_json(complete_config(stored)))
        return 0
    print(describe_agent(listing, stored))
    return 0


def complete_config(stored: str | OversizedConfig | None) -> dict[str, Any]:
    """The stored config (JSON text; None = the defaults) deep-merged over the defaults,
    numbers as `Decimal`/`int`; `WorkerError` when it cannot be read at all."""
    if isinstance(stored, OversizedConfig):
        raise WorkerError(stored.reason)
    try:
        value = {} if stored is None else loads_exact(stored)
    except JsonRefusedError as exc:
        raise WorkerError(f"the stored trading_config cannot be read: {exc}") from exc
    if not isinstance(value, dict):
        raise WorkerError("the stored trading_config is not a JSON object")
    merged = deep_merge(DEFAULT_TRADING_CONFIG, value)
    numbered = _numbers(merged, DEFAULT_TRADING_CONFIG)
    assert isinstance(numbered, dict)  # noqa: S101 - a dict maps to a dict
    return numbered


def _number(text: str) -> Decimal | int | None:
    try:
        value = loads_exact(text)
    except JsonRefusedError:
        return None
    return value if isinstance(value, Decimal | int) and not isinstance(value, bool) else None


def _numbers(value: object, template: object) -> object:
    """`value` with each text that stands where the defaults hold a number's text (such as
    "0.5") turned into that number; list items follow the defaults' first item."""
    if isinstance(value, dict):
        sub = template if isinstance(template, dict) else {}
        return {k: _numbers(v, sub.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        item = template[0] if isinstance(template, list) and template else None
        return [_numbers(v, item) for v in value]
    if isinstance(value, str) and isinstance(template, str) and _number(template) is not None:
        number = _number(value)
        return value if number is None else number
    return value


def pretty_json(value: object, level: int = 0) -> str:
    """JSON indented by two spaces, numbers written exactly (`dumps_exact`)."""
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(value, dict) and value:
        items = [
            f"{pad}{json.dumps(k, ensure_ascii=False)}: {pretty_json(v, level + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(value, list) and value:
        if not any(isinstance(v, dict | list) for v in value):
            return "[" + ", ".join(dumps_exact(v) for v in value) + "]"
        return "[\n" + ",\n".join(pad + pretty_json(v, level + 1) for v in value) + "\n" + end + "]"
    return dumps_exact(value)


def describe_agent(a: AgentListing, stored: str | OversizedConfig | None) -> str:
    """`agents show`: one `field: value` line each, and the config's state."""
    reading = read_config(stored)
    if reading.error is not None:
        config = f"invalid: {reading.error}"
    elif reading.unknown_keys:
        config = f"valid; keys the worker ignores: {', '.join(reading.unknown_keys)}"
    else:
        config = "valid" + (" (the defaults)" if stored is None else "")
    fields = (
        ("agent", str(a.agent_id)),
        ("user", str(a.user_id)),
        ("name", a.name),
        ("mode", a.trading_mode),
        ("automated trading", f"simulation {_switch(a.automated_trading_simulation)}, "
                              f"live {_switch(a.automated_trading_live)}"),
        ("SOL (simulation)", _sol(a.sol_balance) or "- (no simulation wallet)"),
        ("open positions", str(a.open_positions)),
        ("created", a.created_at.isoformat()),
        ("config", config + " (`agents show --config` prints it)"),
    )  # fmt: skip
    return "\n".join(printable(f"{name + ':':<19}{value}") for name, value in fields)
