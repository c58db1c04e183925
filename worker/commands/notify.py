"""`signal-worker notify`: the chosen events of EVENTS_TOPIC to a webhook, each once
(`worker.pipeline.notify`), until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal

import httpx
import structlog
from aiokafka.admin import AIOKafkaAdminClient

from worker.db.pool import connect_migrated
from worker.domain.notify import parse_webhook, redacted
from worker.errors import UsageError
from worker.pipeline.kafka import client_options, start_client
from worker.pipeline.notify import HTTP_TIMEOUT_S, Notifier, NotifyOptions
from worker.settings import Settings

log = structlog.get_logger(__name__)


def options_from(settings: Settings, args: argparse.Namespace) -> tuple[NotifyOptions, str]:
    """The options of the flags and settings, and where the URL came from (`--url` or
    `NOTIFY_WEBHOOK_URL`); `UsageError` with one line when they do not make one."""
    if args.url:
        url, source = args.url, "--url"
    elif settings.notify_webhook_url is not None:
        url, source = settings.notify_webhook_url.get_secret_value(), "NOTIFY_WEBHOOK_URL"
    else:
        raise UsageError("no webhook: give --url URL or set NOTIFY_WEBHOOK_URL")
    try:
        webhook = parse_webhook(url, args.format)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None
    users = frozenset(u for group in args.user for u in group)
    options = NotifyOptions(
        webhook=webhook,
        topic=settings.events_topic_name,
        events=frozenset(args.events),
        users=users,
        rate=args.rate,
        start=args.start,
    )
    return options, source


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Post until SIGTERM/SIGINT; 0 then."""
    options, source = options_from(settings, args)
    # Both services answer at start-up (and the schema has notify_offsets), else one line,
    # as every command; once running, notify rides out their outages.
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s, progress=True)
    await conn.close()
    probe = AIOKafkaAdminClient(**client_options(settings.kafka))
    await start_client(probe, settings.kafka, timeout_s=settings.startup_timeout_s, progress=True)
    await probe.close()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _request_stop, stop, sig)
    log.info(
        "notify_started",
        webhook=redacted(options.webhook.url),
        url_from=source,
        webhook_id=options.webhook.id,
        format=options.webhook.format,
        topic=options.topic,
        events=sorted(options.events),
        users=sorted(str(u) for u in options.users) or "all",
        rate=options.rate,
    )
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
        notifier = Notifier(settings, options, client)
        await notifier.run(stop)
    log.info("notify_stopped", posted=notifier.posted, refused=notifier.refused)
    return 0


def _request_stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("shutdown_requested", signal=sig.name)
    stop.set()
