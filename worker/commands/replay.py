"""`signal-worker replay`: recorded signals and ticks through other agent configs, in memory.

The record: the signals the worker stored and the ticks it kept (`token_price_history`)
over `--from` .. `--to`, or JSON lines files of messages (`--signals`, `--ticks`; each line
a message as published, signals with `created_at`, ticks with `ts`). The agents (by
`--agent` or `--user`, else all) come from the database with their stored configs and
their SOL at the start; positions open at the start are not carried (the output says how
many). Each config runs in its own memory store through the live handlers
(`worker.replay.engine`): the stored configs ("stored config"), then each `--config`
file (overrides merged over each agent's config) and each point of the `--vary` grid.
Printed with the live figures of the same range, in `report`'s table. Writes nothing:
the database is read in one read-only transaction.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.commands.options import no_agent_message
from worker.commands.report import draw_curves, render
from worker.db.pool import connect_migrated
from worker.db.replay import read_agents
from worker.db.report import Filters, read_report
from worker.domain.config import decode_json
from worker.domain.models import Signal
from worker.domain.records import AgentSetup
from worker.domain.results import AgentResult
from worker.errors import InvalidMessage, UsageError
from worker.logging import configure_logging
from worker.messages import PriceTickV1, SignalV1, decode_price, decode_signal
from worker.prices import Tick
from worker.replay.engine import (
    Event,
    Run,
    Start,
    Variant,
    check_variant,
    read_record,
    replay,
)
from worker.settings import Settings

STORED = "stored config"
LIVE = "live"


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Replay every variant; print the table (and draw the chart); 0."""
    # The handlers log every exit at INFO; a replay of a month would print thousands of them.
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    variants = [Variant(STORED), *_config_variants(args.config or []), *grid(args.vary or [])]
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            agents = await read_agents(conn, args.agent, args.user, settings.agent_config_max_bytes)
            if not agents:
                raise UsageError(
                    no_agent_message(args, "agent with a simulation wallet and the id")
                )
            given = None
            if args.signals is not None or args.ticks is not None:
                given = (
                    _signals_file(args.signals) if args.signals else [],
                    _ticks_file(args.ticks) if args.ticks else [],
                )
            record = await read_record(conn, agents, since=args.from_, until=args.to, given=given)
            if record is None:
                raise UsageError(_nothing_to_replay(args))
            start, events, open_at = record.start, record.events, record.open_at
            begin = args.from_ or events[0].at
            live = None
            if args.signals is None:
                filters = Filters([a.agent_id for a in agents], None, begin, args.to)
                live = (await read_report(conn, filters)).results
    finally:
        await conn.close()
    for variant in variants:
        check_variant(variant, start)
    runs = [await _run(start, events, v, settings) for v in variants]
    print(render(_rows(agents, live, runs), args.format))
    if args.format == "table":
        _notes(events, runs, open_at)
    if args.chart is not None:
        panels = [
            (f"{a.name}: SOL + open positions at cost",
             [(r.variant.label, r.curves.get(a.agent_id, [])) for r in runs])
            for a in agents
        ]  # fmt: skip
        draw_curves(args.chart, panels)
        print(f"replay: chart written to {args.chart}")
    return 0


async def _run(start: Start, events: Sequence[Event], variant: Variant, settings: Settings) -> Run:
    tty = sys.stderr.isatty()
    total = len(events)
    last = 0.0

    def progress(done: int) -> None:
        nonlocal last
        if tty and time.monotonic() - last > 0.25:
            last = time.monotonic()
            sys.stderr.write(f"\rreplay: {variant.label}: {done:,}/{total:,} events")
            sys.stderr.flush()

    result = await replay(start, events, variant, settings, progress=progress)
    if tty:
        sys.stderr.write("\r" + " " * 79 + "\r")
    print(f"replay: {variant.label}: {total:,} events in {result.seconds:.2f}s", file=sys.stderr)
    return result


def _rows(
    agents: Sequence[AgentSetup], live: list[AgentResult] | None, runs: Sequence[Run]
) -> list[tuple[str, AgentResult]]:
    """Per agent: the live figures (when replaying the database), then each config's."""
    by_run = [{r.agent_id: r for r in run.results()} for run in runs]
    live_by = {r.agent_id: r for r in live or []}
    rows: list[tuple[str, AgentResult]] = []
    for agent in agents:
        if agent.agent_id in live_by:
            rows.append((LIVE, live_by[agent.agent_id]))
        rows.extend((run.variant.label, found[agent.agent_id]) for run, found in
                    zip(runs, by_run, strict=True))  # fmt: skip
    return rows


def _notes(events: Sequence[Event], runs: Sequence[Run], open_at: int) -> None:
    signals = sum(1 for e in events if e.signal is not None)
    executions = sum(len(r.store.executions) for r in runs)
    seconds = sum(r.seconds for r in runs)
    rate = f", {executions / seconds:,.0f} executions/s" if seconds > 0 else ""
    print(
        f"\nreplayed {_count(signals, 'signal')} and {_count(len(events) - signals, 'tick')} "
        f"through {_count(len(runs), 'config')} in {seconds:.2f}s{rate}; nothing was written"
    )
    if open_at:
        print(f"{open_at} position(s) open at the start of the range are not replayed")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _config_variants(paths: Sequence[Path]) -> list[Variant]:
    variants = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--config {path}: {exc.strerror or exc}") from None
        try:
            value = decode_json(text)
        except ValueError as exc:
            raise UsageError(f"--config {path}: {exc}") from None
        if not isinstance(value, dict):
            raise UsageError(f"--config {path}: expected a JSON object of config overrides")
        variants.append(Variant(path.name, value))
    return variants


def grid(specs: Sequence[str]) -> list[Variant]:
    """`path=v1,v2` specs as the variants of their product (none for no spec)."""
    if not specs:
        return []
    axes: list[list[tuple[str, Any]]] = []
    for spec in specs:
        path, sep, values = spec.partition("=")
        if not sep or not path.strip() or not values.strip():
            raise UsageError(f"--vary {spec!r}: expected PATH=VALUE[,VALUE...], e.g. "
                             "stopLoss.mode=fixed,exponential")  # fmt: skip
        axes.append([(path.strip(), _value(v.strip())) for v in values.split(",")])
    variants = []
    for point in itertools.product(*axes):
        overrides: dict[str, Any] = {}
        for path, value in point:
            _set(overrides, path.split("."), value)
        label = " ".join(f"{path}={_show(value)}" for path, value in point)
        variants.append(Variant(label, overrides))
    return variants


def _value(text: str) -> Any:  # noqa: ANN401 - a JSON value
    try:
        return decode_json(text)
    except ValueError:
        return text  # a bare word: a string


def _show(value: Any) -> str:  # noqa: ANN401 - a JSON value
    return "true" if value is True else "false" if value is False else str(value)


def _set(target: dict[str, Any], path: list[str], value: Any) -> None:  # noqa: ANN401
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


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


def _ticks_file(path: Path) -> list[Tick]:
    out = []
    for n, raw in _lines(path):
        try:
            message: PriceTickV1 = decode_price(raw)
        except InvalidMessage as exc:
            raise UsageError(f"{path}:{n}: {exc}") from None
        if message.ts is None:
            raise UsageError(f"{path}:{n}: a replayed tick needs its ts")
        out.append(Tick(message, message.ts))
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
