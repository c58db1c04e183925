"""`python -m benchmarks [--quick] [--out DIR] [--profile FILE]`: run every measurement.

A full run takes about five minutes and writes `docs/benchmarks.md` and
`docs/benchmarks.png` (or into `--out`); `--quick` runs everything at a tiny scale in
seconds and writes nothing unless `--out` is given. Progress goes to stderr, the table
to stdout. Exit 0 when every measurement ran (whether targets are met or not), 1 when one
could not run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from aiokafka.errors import KafkaError

from benchmarks import limits, scenarios
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
from benchmarks.report import Results, chart, markdown, table


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
    scale = scenarios.QUICK if args.quick else scenarios.FULL
    services = Services.from_env()
    tag = new_tag()
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
        results.info = await scenarios.throughput(ctx, 100, log_level="INFO")
        results.memory = await scenarios.throughput(
            ctx,
            scale.memory_agents,
            group_size=1,
            signals=scale.memory_signals,
            name=f"{scale.memory_agents:,} agents",
        )
        results.latency = await scenarios.latency(ctx)
        results.one_tick = await scenarios.one_tick(ctx)
        results.tick_rate = await scenarios.tick_rate(ctx)
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
    results.duration_s = progress.elapsed_s
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the report files when asked."""
    args = _parser().parse_args(argv)
    # aiokafka logs retried produce errors (a new topic's leader not known yet) as warnings.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
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
