"""`python -m benchmarks [--quick] [--out DIR] [--profile FILE]`: run every measurement.

The headline figures come from a durable PostgreSQL of the benchmark's own
(`benchmarks.durable`: fsync, synchronous commit and full page writes on), unless
`BENCH_DATABASE_URL` names a server; fan-out 100 and the baselines are measured again on the
local disposable server as a secondary column. A full run takes about ten minutes and
writes `docs/benchmarks.md` and `docs/benchmarks.png` (or into `--out`); `--quick` runs
everything at a tiny scale in seconds and writes nothing unless `--out` is given.
Progress goes to stderr, the table to stdout. Exit 0 when every measurement ran (whether
targets are met or not), 1 when one could not run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from aiokafka.errors import KafkaError

from benchmarks import catchup, limits, scenarios
from benchmarks.durable import DurablePostgres
from benchmarks.infra import (
    ROOT,
    BenchError,
    Databases,
    Progress,
    Services,
    TopicSet,
    describe_machine,
    new_tag,
)
from benchmarks.report import Disposable, Results, chart, markdown, table
from worker.runtime.logging import configure_logging
from worker.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Throughput, latency and exits of signal-worker against the machine's "
        "limits, on the local Kafka and PostgreSQL.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny scale, seconds in total; writes nothing unless --out",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for benchmarks.md and benchmarks.png (default: docs/ for a full run)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the fan-out 100 worker under py-spy and write its "
        "profile here (.svg flame graph, or .txt collapsed stacks)",
    )
    return parser


async def _run(args: argparse.Namespace, progress: Progress) -> Results:
    """The headline run on a durable server (the benchmark's own, unless
    `BENCH_DATABASE_URL` names one), then the secondary figures on the local disposable
    server (`DATABASE_URL`, else the local services' default)."""
    scale = scenarios.QUICK if args.quick else scenarios.FULL
    local = Services.from_env()
    tag = new_tag()
    given = os.environ.get("BENCH_DATABASE_URL")
    durable = None if given else DurablePostgres(tag, progress)
    try:
        dsn = await durable.start() if durable is not None else str(given)
        headline = Services(dsn, local.bootstrap)
        results = await _headline(args, progress, scale, headline, tag)
        if durable is not None:
            results.disposable = await _disposable(progress, scale, local, tag + "d")
    finally:
        if durable is not None:
            progress("durable PostgreSQL: stopping and deleting its cluster")
            await durable.stop()
    results.duration_s = progress.elapsed_s
    return results


async def _headline(
    args: argparse.Namespace,
    progress: Progress,
    scale: scenarios.Scale,
    services: Services,
    tag: str,
) -> Results:
    databases = Databases(services, tag)
    topics = TopicSet(services, tag)
    ctx = scenarios.Context(services, databases, topics, scale, progress, tag)
    progress(
        f"services: PostgreSQL {services.database_url.rsplit('@', 1)[-1]}, "
        f"Kafka {services.bootstrap}; run {tag}"
    )
    results = Results(scale=scale, machine=await describe_machine(services))
    try:
        await databases.create_template()
        for fanout in scale.fanouts:
            profile = args.profile if fanout == 100 else None
            results.throughput.append(await scenarios.throughput(ctx, fanout, profile=profile))
        results.relay = await scenarios.relay_cost(ctx)
        results.info = await scenarios.throughput(ctx, 100, log_level="INFO")
        results.memory = await scenarios.throughput(
            ctx,
            scale.memory_agents,
            group_size=1,
            signals=scale.memory_signals,
            name=f"{scale.memory_agents:,} agents",
        )
        results.latency = await scenarios.latency(
            ctx, rate=scale.latency_rate, fanout=scale.latency_fanout, duration_s=scale.latency_s
        )
        for fanout in scale.rest_fanouts:
            results.rest.append(
                await scenarios.latency(
                    ctx,
                    rate=scale.rest_rate,
                    fanout=fanout,
                    duration_s=scale.rest_s,
                    name=f"rest{fanout}",
                )
            )
        results.rest_markers = await scenarios.latency(
            ctx,
            rate=scale.rest_rate,
            fanout=10,
            duration_s=scale.rest_s,
            name="rest10-markers",
            env={"ORDER_MARKERS": "true"},
        )
        results.load = await scenarios.latency(
            ctx,
            rate=scale.load_rate,
            fanout=scale.load_fanout,
            duration_s=scale.latency_s,
            name="load",
            ticks_per_s=scale.load_ticks_per_s,
            tick_tokens=scale.load_tokens,
        )
        results.catch_up = await catchup.catch_up(ctx)
        results.one_tick = await scenarios.one_tick(ctx)
        results.stop_out = await scenarios.stop_out(ctx)
        for tokens in scale.tick_tokens:
            results.tick_rates.append(await scenarios.tick_rate(ctx, tokens))
        results.replay = await scenarios.replay_speed(ctx)
        progress("limits: raw consume")
        consume_topic = (results.at(1) or results.throughput[0]).topics.signals
        results.raw_consume = await limits.raw_consume(
            services.bootstrap, consume_topic, min_s=max(1.0, scale.limit_s / 3)
        )
        progress("limits: raw write (COPY)")
        results.raw_write = await limits.raw_write(ctx)
        for connections in scale.naive_connections:
            progress(f"limits: naive baseline, {connections} connection(s)")
            results.naive[connections] = await limits.naive(ctx, connections=connections)
    finally:
        progress("cleaning up: dropping databases and topics")
        await databases.drop_all()
        await topics.delete_all()
    return results


async def _disposable(
    progress: Progress, scale: scenarios.Scale, services: Services, tag: str
) -> Disposable:
    """Fan-out 100, the COPY ceiling and the faster naive baseline on the local server
    (`fsync`, `synchronous_commit`, `full_page_writes` off): the secondary column."""
    databases = Databases(services, tag)
    topics = TopicSet(services, tag)
    ctx = scenarios.Context(services, databases, topics, scale, progress, tag)
    progress(f"disposable server: PostgreSQL {services.database_url.rsplit('@', 1)[-1]}")
    machine = await describe_machine(services)
    try:
        await databases.create_template()
        throughput = await scenarios.throughput(ctx, 100)
        progress("disposable server: raw write (COPY)")
        raw_write = await limits.raw_write(ctx)
        connections = max(scale.naive_connections)
        progress(f"disposable server: naive baseline, {connections} connections")
        naive = await limits.naive(ctx, connections=connections)
    finally:
        await databases.drop_all()
        await topics.delete_all()
    return Disposable(machine.pg_settings, throughput, raw_write, naive, connections)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the report files when asked."""
    args = _parser().parse_args(argv)
    # aiokafka logs retried produce errors (a new topic's leader not known yet) as warnings.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    # The replay scenario runs the worker's handlers in this process: their per-exit INFO
    # lines would land on stdout, in the table.
    configure_logging(Settings(log_level="WARNING", log_format="json"))
    progress = Progress()
    started = time.monotonic()
    try:
        import uvloop

        results = uvloop.run(_run(args, progress))
    except (BenchError, KafkaError, OSError) as exc:
        progress.done()
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 1
    progress.done()
    print(table(results))
    out = args.out if args.out is not None else (None if args.quick else ROOT / "docs")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        chart(results, out / "benchmarks.png")
        (out / "benchmarks.md").write_text(markdown(results, "benchmarks.png"))
        print(f"\nwrote {out / 'benchmarks.md'} and {out / 'benchmarks.png'}", file=sys.stderr)
    print(f"done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
