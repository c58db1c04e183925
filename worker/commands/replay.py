"""`signal-worker replay`: recorded signals and ticks through other agent configs, in memory.

The record: the signals the worker stored and the ticks it kept (`token_price_history`)
over `--from` .. `--to`, or JSON lines files of messages (`--signals`, `--ticks`; each line
a message as published, signals with `created_at`, ticks with `ts`). The agents (by
`--agent` or `--user`, else all) come from the database with their stored configs and
their SOL at the start; positions open at the start are not carried (the output says how
many). Each config runs in its own memory store through the live handlers
(`worker.replay.engine`): the stored configs ("stored config"), then each `--config`
file (overrides merged over each agent's config) and each point of the `--vary` grid.
Printed with the live figures of the same range, in `report`'s tables, with each
config's rank among the agent's replayed configs (`ranks`: by realised plus unrealised
P/L at the end, then max drawdown; the rows stay in config order, the stored config
first). Writes nothing: the
database is read in one read-only transaction.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from worker.commands.options import no_agent_message
from worker.commands.report import Panel, check_chart_support, draw_curves, render
from worker.commands.text import printable
from worker.db.pool import connect_migrated
from worker.db.replay import read_agents, read_history
from worker.db.report import Filters, read_report
from worker.db.verify import read_live_rows
from worker.domain.config_reading import decode_json, unknown_keys
from worker.domain.models import PriceTick, Signal
from worker.domain.records import AgentSetup
from worker.domain.results import AgentResult
from worker.errors import InvalidMessage, UsageError
from worker.messages import PriceTickV1, SignalV1, decode_price, decode_signal
from worker.replay.engine import (
    MAX_VARIANTS,
    Event,
    Outcome,
    Start,
    Variant,
    check_variant,
    record_of,
    replay,
    replay_each,
)
from worker.replay.verify import compare, replayed_rows, report_lines
from worker.runtime.logging import configure_logging
from worker.settings import Settings

STORED = "stored config"
MAX_NESTING = 8  # levels of objects and arrays in overrides: a config has 4 at most
LIVE = "live"


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Replay every variant; print the table (and draw the chart); 0. With --verify, the
    stored configs' replay against the live ledger: 0 when identical, else 1."""
    # The handlers log every exit at INFO; a replay of a month would print thousands of them.
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    if getattr(args, "verify", False):
        return await _verify(settings, args)
    if args.chart is not None:
        check_chart_support()
    variants = _variants(args)
    # The input files are read before any connection: a slow pipe on stdin must not hold a
    # transaction open (a migration's lock would queue behind it, and the live worker behind
    # that); the database is then read in one short read-only transaction.
    given = _given(args)
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            agents = await read_agents(conn, args.agent, args.user, settings.agent_config_max_bytes)
            if not agents:
                raise UsageError(no_agent_message(args))
            history = await read_history(conn, agents, since=args.from_, until=args.to, given=given)
            record = record_of(agents, history)
            if record is None:
                raise UsageError(_nothing_to_replay(args))
            live = None
            if args.signals is None:
                filters = Filters([a.agent_id for a in agents], None, record.begin, args.to)
                live = (await read_report(conn, filters)).results
    finally:
        await conn.close()
    start, events = record.start, record.events
    invalid: list[str] = []
    for variant in variants:
        invalid = check_variant(variant, start)
    outcomes = await _replay_all(start, events, variants, settings)
    rows = _rows(agents, live, outcomes)
    print(render(rows, args.format, ranks(rows)))
    if args.format == "table":
        _notes(events, outcomes, record.open_at, invalid)
    if args.chart is not None:
        panels = [
            Panel(f"{a.name}: SOL + open positions at cost",
                  [(o.variant.label, o.curves.get(a.agent_id, [])) for o in outcomes])
            for a in agents
        ]  # fmt: skip
        draw_curves(args.chart, panels)
        print(f"replay: chart written to {args.chart}")
    return 0


VERIFY_ALONE = (("config", "--config"), ("vary", "--vary"), ("signals", "--signals"),
                ("ticks", "--ticks"), ("chart", "--chart"))  # fmt: skip


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    """`replay --verify`: the range replayed with the stored configs, compared row by row
    with the live ledger (`worker.replay.verify`); its lines (or JSON); 0 or 1."""
    for name, flag in VERIFY_ALONE:
        if getattr(args, name, None):
            raise UsageError(f"--verify replays the stored configs over the recorded "
                             f"signals and ticks: {flag} does not go with it")  # fmt: skip
    if args.format == "csv":
        raise UsageError("--verify prints lines (--format table) or --format json")
    ignore = {c.strip() for spec in args.ignore or [] for c in spec.split(",") if c.strip()}
    with_open = args.to is None
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            agents = await read_agents(conn, args.agent, args.user, settings.agent_config_max_bytes)
            if not agents:
                raise UsageError(
                    no_agent_message(args, "agent with a simulation wallet and the id")
                )
            history = await read_history(conn, agents, since=args.from_, until=args.to)
            record = record_of(agents, history)
            if history is None or record is None:
                raise UsageError(_nothing_to_replay(args))
            live = await read_live_rows(
                conn,
                [s.id for s in history.signals if s.id is not None],
                [(a.agent_id, a.wallet_address) for a in agents if a.wallet_address is not None],
                args.to,
                with_open=with_open,
            )
    finally:
        await conn.close()
    run = await replay(record.start, record.events, Variant(STORED), settings)
    replayed = replayed_rows(run.store, history.signals, agents, with_open=with_open)
    comparison = compare(live, replayed, ignore)
    notes = []
    if record.open_at:
        notes.append(f"{record.open_at} position(s) open at the start of the range are not "
                     "replayed: their sales and balances are live only")  # fmt: skip
    if not with_open:
        notes.append("open positions are not compared (--to given: the live table holds "
                     "their state now, not at the range's end)")  # fmt: skip
    if args.format == "json":
        print(orjson.dumps({
            "identical": comparison.identical, "compared": comparison.counts,
            "differences": len(comparison.differences),
            "first": [d.as_dict() for d in comparison.differences[: args.max_differences]],
            "ignored": sorted(ignore), "notes": notes,
        }, option=orjson.OPT_INDENT_2).decode())  # fmt: skip
    else:
        for line in [*report_lines(comparison, args.max_differences), *notes]:
            print(printable(line))
    return 0 if comparison.identical else 1


def _variants(args: argparse.Namespace) -> list[Variant]:
    """The stored config, each --config and each point of the --vary grid: at most
    `MAX_VARIANTS`, each checked for keys no config has."""
    allow_unknown = bool(getattr(args, "allow_unknown_keys", False))
    configs = args.config or []
    if len(configs) >= MAX_VARIANTS:
        raise UsageError(f"--config: {len(configs)} files; a replay runs at most "
                         f"{MAX_VARIANTS} configs in all (the stored one counts)")  # fmt: skip
    return [
        Variant(STORED),
        *_config_variants(configs, allow_unknown=allow_unknown),
        *grid(args.vary or [], allow_unknown=allow_unknown, room=MAX_VARIANTS - 1 - len(configs)),
    ]


def _given(args: argparse.Namespace) -> tuple[list[Signal], list[PriceTick] | None] | None:
    """The signals and ticks of --signals / --ticks, read in full (None: from the database;
    --signals without --ticks replays the file's signals on the price history, which
    `prices import` fills for periods the worker did not record)."""
    if args.signals is None and args.ticks is None:
        return None
    return (
        _signals_file(args.signals) if args.signals else [],
        _ticks_file(args.ticks) if args.ticks else None,
    )


async def _replay_all(
    start: Start, events: Sequence[Event], variants: Sequence[Variant], settings: Settings
) -> list[Outcome]:
    """Each variant's outcome, one run at a time (`replay_each`: no run's store is kept)."""
    outcomes = []
    tty = sys.stderr.isatty()
    async for outcome in replay_each(start, events, variants, settings,
                                     progress=_progress(len(events), tty)):  # fmt: skip
        if tty:
            sys.stderr.write("\r" + " " * 79 + "\r")
        label = printable(outcome.variant.label)
        print(f"replay: {label}: {outcome.events:,} events in {outcome.seconds:.2f}s",
              file=sys.stderr)  # fmt: skip
        outcomes.append(outcome)
    return outcomes


def _progress(total: int, tty: bool) -> Callable[[Variant], Callable[[int], None] | None]:
    """A progress line per variant on a terminal's stderr (none elsewhere)."""

    def for_variant(variant: Variant) -> Callable[[int], None] | None:
        if not tty:
            return None
        last = 0.0
        label = printable(variant.label)

        def progress(done: int) -> None:
            nonlocal last
            if time.monotonic() - last > 0.25:
                last = time.monotonic()
                sys.stderr.write(f"\rreplay: {label}: {done:,}/{total:,} events")
                sys.stderr.flush()

        return progress

    return for_variant


def _rows(
    agents: Sequence[AgentSetup], live: list[AgentResult] | None, outcomes: Sequence[Outcome]
) -> list[tuple[str, AgentResult]]:
    """Per agent: the live figures (when replaying the database), then each config's."""
    by_outcome = [{r.agent_id: r for r in o.results} for o in outcomes]
    live_by = {r.agent_id: r for r in live or []}
    rows: list[tuple[str, AgentResult]] = []
    for agent in agents:
        if agent.agent_id in live_by:
            rows.append((LIVE, live_by[agent.agent_id]))
        rows.extend((o.variant.label, found[agent.agent_id]) for o, found in
                    zip(outcomes, by_outcome, strict=True))  # fmt: skip
    return rows


def ranks(rows: Sequence[tuple[str, AgentResult]]) -> list[int | None]:
    """Each row's rank among the replayed configs of its agent (the live row has none): by
    P/L at the end, realised plus unrealised (the most first; a config holding a token
    without a price, its unrealised unknown, after those that can be valued, by realised
    P/L), then by max drawdown in SOL (the least first; none last). Rows equal on these
    share a rank (1, 1, 3)."""

    def key(r: AgentResult) -> tuple[bool, Decimal, bool, Decimal]:
        unvalued = r.unrealised_pnl_sol is None
        total = r.realised_pnl_sol + (r.unrealised_pnl_sol or Decimal(0))
        drawdown = r.figures.max_drawdown_sol
        return (unvalued, -total, drawdown is None, drawdown or Decimal(0))

    by_agent: dict[UUID, list[tuple[tuple[bool, Decimal, bool, Decimal], int]]] = {}
    for n, (label, r) in enumerate(rows):
        if label != LIVE:
            by_agent.setdefault(r.agent_id, []).append((key(r), n))
    out: list[int | None] = [None] * len(rows)
    for keyed in by_agent.values():
        keyed.sort()
        for place, (k, n) in enumerate(keyed, start=1):
            earlier = [out[m] for k2, m in keyed[: place - 1] if k2 == k]
            out[n] = earlier[0] if earlier else place
    return out


def _notes(
    events: Sequence[Event], outcomes: Sequence[Outcome], open_at: int, invalid: Sequence[str]
) -> None:
    signals = sum(1 for e in events if e.signal is not None)
    executions = sum(o.executions for o in outcomes)
    seconds = sum(o.seconds for o in outcomes)
    rate = f", {executions / seconds:,.0f} executions/s" if seconds > 0 else ""
    print(
        f"\nreplayed {_count(signals, 'signal')} and {_count(len(events) - signals, 'tick')} "
        f"through {_count(len(outcomes), 'config')} in {seconds:.2f}s{rate}; nothing was written"
    )
    if open_at:
        print(f"{open_at} position(s) open at the start of the range are not replayed")
    for name in invalid:
        print(printable(f"agent {name!r}: a stored version of its config is invalid (`agents "
                        "lint` says why for the current one); it replays as the worker ran it: "
                        "no buys while it was in force"))  # fmt: skip


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _config_variants(paths: Sequence[Path], *, allow_unknown: bool) -> list[Variant]:
    variants = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--config {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"--config {path}: not UTF-8 text: {exc.reason}") from None
        try:
            value = decode_json(text)
        except ValueError as exc:
            raise UsageError(f"--config {path}: {exc}") from None
        if not isinstance(value, dict):
            raise UsageError(f"--config {path}: expected a JSON object of config overrides")
        if _nesting(value) > MAX_NESTING:
            raise UsageError(f"--config {path}: nested deeper than any config "
                             f"({MAX_NESTING} levels at most)")  # fmt: skip
        _refuse_unknown(f"--config {path}", value, allow_unknown=allow_unknown)
        variants.append(Variant(path.name, value))
    return variants


def grid(specs: Sequence[str], *, allow_unknown: bool = False, room: int = MAX_VARIANTS - 1
         ) -> list[Variant]:  # fmt: skip
    """`path=v1,v2` specs as the variants of their product (none for no spec).

    Refused with one line, before any variant is made: a grid of more than `room` points,
    a path given twice or inside another (`stopLoss=5` with `stopLoss.mode=fixed`), a
    path deeper than any config's, and (unless `allow_unknown`) a key no config has."""
    if not specs:
        return []
    axes: list[tuple[str, list[Any]]] = []
    for spec in specs:
        path, sep, values = spec.partition("=")
        path = path.strip()
        if not sep or not path or not values.strip():
            raise UsageError(f"--vary {_cut(spec)!r}: expected PATH=VALUE[,VALUE...], e.g. "
                             "stopLoss.mode=fixed,exponential")  # fmt: skip
        axes.append((path, [_value(v.strip()) for v in values.split(",")]))
    size = math.prod(len(values) for _, values in axes)
    if size > room:
        counts = " x ".join(str(len(values)) for _, values in axes)
        raise UsageError(
            f"--vary: a grid of {size:,} configs ({counts}); a replay runs at most "
            f"{MAX_VARIANTS} configs in all (the stored one and each --config count): "
            "vary fewer values"
        )
    parts = _check_paths([path for path, _ in axes])
    variants = []
    for point in itertools.product(*[[(path, v) for v in values] for path, values in axes]):
        overrides: dict[str, Any] = {}
        for path, value in point:
            _set(overrides, parts[path], value)
        label = " ".join(f"{path}={_show(value)}" for path, value in point)
        if _nesting(overrides) > MAX_NESTING:
            raise UsageError(f"--vary {_cut(label)}: a value nested deeper than any config "
                             f"({MAX_NESTING} levels at most)")  # fmt: skip
        _refuse_unknown(f"--vary {_cut(label)}", overrides, allow_unknown=allow_unknown)
        variants.append(Variant(label, overrides))
    return variants


def _check_paths(paths: Sequence[str]) -> dict[str, list[str]]:
    """Each path's keys; `UsageError` for an empty key, a path deeper than any config's,
    a path given twice or inside another (its parent would be both a value and an object)."""
    parts: dict[str, list[str]] = {}
    for path in paths:
        keys = path.split(".")
        if len(keys) > MAX_NESTING:
            raise UsageError(f"--vary {_cut(path)}: a path of {len(keys):,} keys; no config "
                             f"is nested deeper than {MAX_NESTING}")  # fmt: skip
        if any(not key.strip() for key in keys):
            raise UsageError(f"--vary {path}: an empty key (PATH is keys joined by dots)")
        if path in parts:
            raise UsageError(f"--vary {path}: given twice; put its values in one --vary")
        parts[path] = [key.strip() for key in keys]
    for path, keys in parts.items():
        for other, other_keys in parts.items():
            if other != path and other_keys[: len(keys)] == keys:
                raise UsageError(f"--vary {path} and --vary {other}: one is inside the other; "
                                 "vary either the object or keys inside it")  # fmt: skip
    return parts


def _refuse_unknown(where: str, overrides: dict[str, Any], *, allow_unknown: bool) -> None:
    """`UsageError` naming the keys no config has (as `agents lint` lists them), unless
    allowed: a misspelt key would otherwise replay as if it changed something."""
    unknown, _legacy = unknown_keys(overrides)
    if unknown and not allow_unknown:
        raise UsageError(
            f"{where}: no config has the key(s) {_cut(', '.join(unknown))} (misspelt? "
            "--allow-unknown-keys replays them anyway, ignored as the worker ignores them)"
        )


def _nesting(value: object) -> int:
    """How deep objects and arrays nest in `value` (0 for a scalar), without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _cut(text: str, limit: int = 80) -> str:
    """`text` short enough for a one-line message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value(text: str) -> Any:  # noqa: ANN401 - a JSON value
    try:
        return decode_json(text)
    except ValueError:
        return text  # a bare word: a string


def _show(value: Any) -> str:  # noqa: ANN401 - a JSON value
    return "true" if value is True else "false" if value is False else str(value)


def _set(target: dict[str, Any], keys: list[str], value: Any) -> None:  # noqa: ANN401
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _signals_file(path: Path) -> list[Signal]:
    out = []
    for n, raw in _lines(path):
        try:
            message: SignalV1 = decode_signal(raw)
        except InvalidMessage as exc:
            raise UsageError(f"{path}:{n}: {exc}") from None
        if message.created_at is None:
            raise UsageError(f"{path}:{n}: a replayed signal needs its created_at")
        out.append(message.to_domain(coordinates=f"{path.name}:{n}", received_at=datetime.now(UTC)))
    return out


def _ticks_file(path: Path) -> list[PriceTick]:
    out = []
    for n, raw in _lines(path):
        try:
            message: PriceTickV1 = decode_price(raw)
        except InvalidMessage as exc:
            raise UsageError(f"{path}:{n}: {exc}") from None
        if message.ts is None:
            raise UsageError(f"{path}:{n}: a replayed tick needs its ts")
        out.append(message.to_domain(received_at=message.ts))
    return out


def _lines(path: Path) -> list[tuple[int, bytes]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    return [(n, line) for n, line in enumerate(data.splitlines(), start=1) if line.strip()]


def _nothing_to_replay(args: argparse.Namespace) -> str:
    if args.signals is not None:
        return f"{args.signals}: no signal of the agents' users"
    span = f" from {args.from_:%Y-%m-%d %H:%M}" if args.from_ else ""
    span += f" until {args.to:%Y-%m-%d %H:%M}" if args.to else ""
    return f"no signals of these agents' users{span or ' yet'}: nothing to replay"
