"""Command-line options of the commands that publish to COMMANDS_TOPIC (`users create`,
`agents create | config | pause | ...`, `positions close`) and of `agents list | show`;
light (parsed before any command module is imported)."""

from __future__ import annotations

import argparse
import math

from worker.commands.options import uuid_arg

Actions = argparse._SubParsersAction
DEFAULT_TIMEOUT_S = 30.0
PAUSE_MODES = ("simulation", "live", "all")


def timeout_arg(text: str) -> float:
    """Seconds to wait, > 0 and finite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


def add_sending(parser: argparse.ArgumentParser) -> None:
    """--key, --timeout and --no-wait: what every command that publishes takes."""
    parser.add_argument(
        "--key",
        metavar="KEY",
        help="the command's idempotency key (default: cli-<random>); the same key from the "
        "same user is the same command, applied once: re-run with it to see its result",
    )
    parser.add_argument(
        "--timeout",
        type=timeout_arg,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for the worker's result (default: %(default)g); exit 3 past it",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="send the command and exit without its result"
    )


def _agent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", type=uuid_arg, metavar="AGENT", help="the agent's id")


def add_users(sub: Actions[argparse.ArgumentParser]) -> None:
    """`users create`."""
    users = sub.add_parser("users", help="create users (a command to the worker)")
    actions = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", help="create a user; prints its id", description="Publishes create_user."
    )
    create.add_argument("--email", required=True, help="the user's email, unique")
    create.add_argument(
        "--user-id", type=uuid_arg, metavar="UUID", help="its id (default: a new random one)"
    )
    add_sending(create)


def add_agent_actions(actions: Actions[argparse.ArgumentParser]) -> None:
    """`agents create | list | show | config | pause | resume | fund | withdraw | rename`."""
    create = actions.add_parser(
        "create",
        help="create an agent with a simulation wallet",
        description="Publishes create_agent. Without --config the worker writes the complete "
        "default config (`agents show AGENT --config` prints it, ready to edit).",
    )
    create.add_argument("--user", required=True, type=uuid_arg, metavar="UUID", help="its user")
    create.add_argument("--name", required=True, help="its name")
    create.add_argument("--mode", choices=("simulation", "live"), default="simulation",
                        help="its trading mode (default: %(default)s)")  # fmt: skip
    create.add_argument("--config", metavar="FILE", help="its trading_config (a JSON object)")
    create.add_argument("--sol", metavar="AMOUNT", help="starting simulation SOL (a deposit)")
    create.add_argument(
        "--agent-id",
        type=uuid_arg,
        metavar="UUID",
        help="its id (default: derived by the worker from the user and the key)",
    )
    add_sending(create)

    listing = actions.add_parser("list", help="the agents: mode, switches, SOL, open positions")
    listing.add_argument("--user", type=uuid_arg, metavar="UUID", help="only this user's agents")
    listing.add_argument("--format", choices=("table", "json"), default="table",
                         help="table (default) or json")  # fmt: skip

    show = actions.add_parser("show", help="one agent; --config: its complete config as JSON")
    _agent(show)
    show.add_argument(
        "--config",
        action="store_true",
        help="print the config the worker uses (stored over the defaults) as JSON to edit and "
        "pass back with `agents config AGENT --set FILE`",
    )

    config = actions.add_parser(
        "config", help="replace or patch (RFC 7396) an agent's trading_config"
    )
    _agent(config)
    change = config.add_mutually_exclusive_group(required=True)
    change.add_argument("--set", metavar="FILE", help="the whole new config (a JSON object)")
    change.add_argument(
        "--patch", metavar="JSON|@FILE", help="a JSON Merge Patch, inline or @FILE (null removes)"
    )
    add_sending(config)

    for name, verb in (("pause", "off"), ("resume", "on")):
        switch = actions.add_parser(name, help=f"turn automated trading {verb}")
        _agent(switch)
        switch.add_argument("--mode", choices=PAUSE_MODES, default="all",
                            help="which mode's switch (default: %(default)s)")  # fmt: skip
        add_sending(switch)

    for name, what in (("fund", "deposit into"), ("withdraw", "withdraw from")):
        money = actions.add_parser(name, help=f"{what} the simulation wallet (SOL)")
        _agent(money)
        money.add_argument("amount", metavar="AMOUNT", help="SOL, > 0 (e.g. 1.5)")
        add_sending(money)

    rename = actions.add_parser("rename", help="rename an agent")
    _agent(rename)
    rename.add_argument("name", metavar="NAME", help="its new name")
    add_sending(rename)


def add_positions_close(actions: Actions[argparse.ArgumentParser]) -> None:
    """`positions close`."""
    close = actions.add_parser(
        "close",
        help="close an agent's open position(s) by hand at the latest price",
        description="Publishes close_positions: a sale at the latest price as of the "
        "command's time, close reason `manual`.",
    )
    _agent(close)
    which = close.add_mutually_exclusive_group(required=True)
    which.add_argument("--token", metavar="MINT", help="the position in this token")
    which.add_argument("--all", action="store_true", help="every open position of the agent")
    add_sending(close)
