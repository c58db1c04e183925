"""Kafka client construction: connection and security settings, topics, start-up retries."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from worker.errors import ServiceUnavailable, WorkerError
from worker.retry import (
    StartupClock,
    describe,
    is_unresolvable,
    startup_retry,
    unreachable_hint,
)
from worker.settings import KafkaSettings

log = structlog.get_logger(__name__)


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client: brokers, security, timeouts."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
        "client_id": "signal-worker",
    }
    if kafka.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=kafka.ssl_cafile)
    return options


class BrokerRefusedError(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The broker answered but refused us (credentials, TLS): retrying cannot help."""


_SASL_REFUSALS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)


def _describe(exc: BaseException) -> str:
    # KafkaError's str() already starts with the class name; do not repeat it.
    if isinstance(exc, KafkaError) and exc.args:
        return f"{type(exc).__name__}: {str(exc.args[0]).strip().splitlines()[0]}"
    return describe(exc)


def unavailable(
    kafka: KafkaSettings, exc: BaseException, hint: str | None = None
) -> ServiceUnavailable:
    """The one-line error for a broker that cannot be reached or refuses us; `hint` (what
    to do) in place of the error's own words."""
    if isinstance(exc, BrokerRefusedError):
        return ServiceUnavailable(
            f"Kafka at {kafka.bootstrap_servers} refused the connection "
            f"(KAFKA_SECURITY_PROTOCOL={kafka.security_protocol}): {exc.args[0]}"
        )
    return ServiceUnavailable(
        f"cannot use Kafka at {kafka.bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS, "
        f"{kafka.security_protocol}): {hint or _describe(exc)}"
    )


def _brokers(kafka: KafkaSettings) -> list[tuple[str, int]]:
    brokers = []
    for broker in kafka.bootstrap_servers.split(","):
        host, _, port = broker.strip().rpartition(":")
        brokers.append((host.strip("[]"), int(port) if port.isdigit() else 9092))
    return brokers


async def _resolve_brokers(kafka: KafkaSettings) -> None:
    """`socket.gaierror` when no bootstrap server's host name resolves. aiokafka says only
    "unable to bootstrap" for that, as for a broker that is down; this tells them apart."""
    loop = asyncio.get_running_loop()
    failure: socket.gaierror | None = None
    for host, port in _brokers(kafka):
        try:
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            failure = exc
        else:
            return
    if failure is not None:
        raise failure


PROBE_TIMEOUT_S = 1.0


async def _probe(host: str, port: int) -> BaseException | None:
    """What one TCP connection to a broker meets: None when something listens there."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return exc
    writer.close()
    return None


async def _unreachable_hint(
    kafka: KafkaSettings, exc: BaseException, waited_s: float
) -> str | None:
    """What to do when the brokers could not be used: a name that does not resolve, nothing
    listening (is Kafka running?), no answer; None when something listens (then aiokafka's
    own words say more: a listener that is not Kafka's, or an advertised address)."""
    brokers = _brokers(kafka)
    if is_unresolvable(exc):
        where = [f"{host}:{port}" for host, port in brokers]
        return unreachable_hint("Kafka", "KAFKA_BOOTSTRAP_SERVERS", where, exc, waited_s)
    if isinstance(exc, TimeoutError):  # a start cut at the deadline: nothing answered
        where = [f"{host}:{port}" for host, port in brokers]
        return unreachable_hint("Kafka", "KAFKA_BOOTSTRAP_SERVERS", where, exc, waited_s)
    if not isinstance(exc, KafkaConnectionError):
        return None
    found = await asyncio.gather(*(_probe(host, port) for host, port in brokers))
    if any(f is None for f in found):
        return None
    where = [f"{host}:{port}" for host, port in brokers]
    refused = [f for f in found if isinstance(f, ConnectionRefusedError)]
    first = refused[0] if len(refused) == len(found) else next(f for f in found if f is not None)
    return unreachable_hint("Kafka", "KAFKA_BOOTSTRAP_SERVERS", where, first, waited_s)


async def start_client(
    client: Any,  # noqa: ANN401 - aiokafka clients are untyped
    kafka: KafkaSettings,
    *,
    timeout_s: float,
    progress: bool = False,
) -> None:
    """`await client.start()`, retried for at most `timeout_s`; `ServiceUnavailable` after.
    `progress`: a line per retry (a process starting; `worker.retry.startup_retry`).

    A broker that refuses our credentials or certificate fails at once, not after the
    retries: that does not pass on its own.
    """
    clock = StartupClock(timeout_s)
    try:
        service = f"Kafka at {kafka.bootstrap_servers}"
        async for attempt in startup_retry(timeout_s, service=service, progress=progress):
            with attempt:
                await _resolve_brokers(kafka)
                left = clock.attempt_s(kafka.request_timeout_s)
                if left < kafka.request_timeout_s:
                    # Near the deadline (a command's 3 s, always): a broker that accepts and
                    # never answers would hold this attempt for the whole request timeout.
                    # A start cut short is the last attempt (`_CutShort` is not retried):
                    # the deadline has passed, and a client is never started twice.
                    try:
                        await asyncio.wait_for(_start(client, kafka), left)
                    except TimeoutError as exc:
                        raise _CutShort from exc
                else:
                    await _start(client, kafka)
    except (KafkaError, OSError, _CutShort) as exc:
        await _close_quietly(client)
        cause = exc.__cause__ if isinstance(exc, _CutShort) else exc
        assert cause is not None  # noqa: S101 - _CutShort is raised from its timeout
        hint = await _unreachable_hint(kafka, cause, clock.waited_s())
        raise unavailable(kafka, cause, hint) from cause


class _CutShort(Exception):  # noqa: N818 - reads as what happened
    """A client's start stopped at the start-up deadline (the cause: its `TimeoutError`)."""


async def _start(client: Any, kafka: KafkaSettings) -> None:  # noqa: ANN401
    try:
        await client.start()
    except KafkaConnectionError:
        refusal = await _refusal(kafka)
        if refusal is not None:
            raise refusal from None
        raise


async def _refusal(kafka: KafkaSettings) -> BrokerRefusedError | None:
    """Why the brokers refuse us, if they do; aiokafka only logs it and says "unable to
    bootstrap". One connection to each broker in turn, with the clients' own options."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    options = client_options(kafka)
    for broker in options["bootstrap_servers"]:
        host, port = broker.rsplit(":", 1)
        try:
            conn = await create_conn(
                host.strip("[]"),
                int(port),
                client_id=options["client_id"],
                request_timeout_ms=options["request_timeout_ms"],
                ssl_context=options.get("ssl_context"),
                security_protocol=kafka.security_protocol,
                sasl_mechanism=options.get("sasl_mechanism"),
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            )
        except _SASL_REFUSALS as exc:
            return BrokerRefusedError(
                f"SASL authentication failed for user {kafka.sasl_username!r} with "
                f"{kafka.sasl_mechanism} (check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and "
                f"KAFKA_SASL_MECHANISM): {_broker_reason(exc)}"
            )
        except ssl.SSLError as exc:
            return BrokerRefusedError(
                f"TLS handshake with {broker} failed (check KAFKA_SSL_CAFILE): {exc.reason or exc}"
            )
        except (KafkaError, OSError, TimeoutError):
            continue
        conn.close()
    return None


def _broker_reason(exc: KafkaError) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


async def _close_quietly(client: Any) -> None:  # noqa: ANN401 - aiokafka clients are untyped
    closer = getattr(client, "stop", None) or client.close
    try:
        await closer()
    except (KafkaError, OSError) as exc:
        log.debug("kafka_client_close_failed", error=describe(exc))


# The producer's request limit when the topics allow no more (the broker's default record
# limit is 1 MiB; a dead letter adds its headers to a record of that size).
DEFAULT_MAX_REQUEST_BYTES = 2 * 1024 * 1024
# What the DLQ topic accepts beyond the input topics' record limit: the dead-letter headers.
DLQ_HEADROOM_BYTES = 64 * 1024
# aiokafka's default record batch (a topic accepts any batch this small).
DEFAULT_MAX_BATCH_BYTES = 16_384
# Kafka's default `message.max.bytes` (what a topic accepts unless configured otherwise).
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
_MAX_MESSAGE_BYTES = "max.message.bytes"
# The least `max.message.bytes` an events topic must have: the largest event cut down to its
# small fields (some 15 KB, `worker.pipeline.relay.CUT_DOWN`) and its framing.
MIN_EVENTS_TOPIC_BYTES = 32 * 1024


def make_producer(
    kafka: KafkaSettings,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    linger_ms: int = 5,
) -> AIOKafkaProducer:
    """The producer of dead letters and published messages: acks from all in-sync replicas;
    record batches up to `max_batch_bytes` (no more than the topic accepts in one), sent
    after waiting `linger_ms` for more."""
    return AIOKafkaProducer(
        **client_options(kafka),
        acks="all",
        enable_idempotence=True,
        max_request_size=max(max_request_bytes, max_batch_bytes, DEFAULT_MAX_REQUEST_BYTES),
        max_batch_size=max_batch_bytes,
        linger_ms=linger_ms,
    )


@dataclass(frozen=True)
class TopicLimits:
    """The record limits (`max.message.bytes`) the worker's producers work with."""

    dlq: int  # what the DLQ topic accepts
    events: int | None  # what EVENTS_TOPIC accepts (None: events off, or not told)


async def ensure_topics(
    kafka: KafkaSettings, *, timeout_s: float, events_topic: str | None = None
) -> TopicLimits:
    """Create the signal, price and dead-letter topics if missing; the DLQ's record limit.

    The DLQ topic is created accepting records `DLQ_HEADROOM_BYTES` larger than the largest
    the input topics accept, so the dead letter of any input record fits whole. When it
    exists already with a smaller limit, that is logged (dead letters that do not fit are
    cut down, see `worker.pipeline.deadletters`). Returns the DLQ's actual limit, and the
    events topic's when `events_topic` is given (the relay's record batches fit in it).
    """
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await start_client(admin, kafka, timeout_s=timeout_s, progress=True)  # the worker's start
    try:
        inputs = [kafka.signals_topic, kafka.prices_topic]
        existing = set(await admin.list_topics())
        missing_inputs = [t for t in inputs if t not in existing]
        if missing_inputs:
            await _create(admin, kafka, missing_inputs, {})
        await _ensure_commands(admin, kafka, existing)
        inputs.append(kafka.commands_topic)
        if events_topic is not None and events_topic not in existing:
            await _create(admin, kafka, [events_topic], {})
        limits = await record_limits(admin, inputs)
        wanted = max(limits.values(), default=KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
        wanted += DLQ_HEADROOM_BYTES
        if kafka.dlq_topic not in existing:
            await _create(admin, kafka, [kafka.dlq_topic], {_MAX_MESSAGE_BYTES: str(wanted)})
        told = await record_limits(
            admin, [kafka.dlq_topic, *([events_topic] if events_topic else [])]
        )
        dlq = told.get(kafka.dlq_topic, wanted)
        events = None if events_topic is None else told.get(events_topic)
        if events_topic is not None:
            _check_events_limit(events_topic, events)
        if dlq < wanted:
            log.warning(
                "dlq_topic_record_limit_small",
                topic=kafka.dlq_topic,
                max_message_bytes=dlq,
                wanted=wanted,
                effect="dead letters larger than this are sent with their value cut down",
            )
    except KafkaError as exc:
        raise unavailable(kafka, exc) from exc
    finally:
        await admin.close()
    return TopicLimits(dlq=dlq, events=events)


def _check_events_limit(topic: str, limit: int | None) -> None:
    """`WorkerError` in one line when the events topic cannot take a cut-down event; a
    warning when its limit could not be read (the relay then sends small record batches)."""
    if limit is None:
        log.warning(
            "events_topic_record_limit_unknown",
            topic=topic,
            effect="record batches of 16 KiB; events over 1 MiB sent cut down",
        )
    elif limit < MIN_EVENTS_TOPIC_BYTES:
        raise WorkerError(
            f"EVENTS_TOPIC {topic} accepts records of at most {limit:,} bytes "
            f"(max.message.bytes); events need {MIN_EVENTS_TOPIC_BYTES:,}: raise it, or set "
            "EVENTS_ENABLED=false"
        )


async def require_topics(kafka: KafkaSettings, topics: list[str], *, timeout_s: float) -> None:
    """`WorkerError` in one line when one of `topics` does not exist on the brokers."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await start_client(admin, kafka, timeout_s=timeout_s)
    try:
        existing = set(await admin.list_topics())
    except KafkaError as exc:
        raise unavailable(kafka, exc) from exc
    finally:
        await admin.close()
    missing = [t for t in topics if t not in existing]
    if missing:
        raise WorkerError(
            f"topic {missing[0]!r} does not exist on {kafka.bootstrap_servers}: start the "
            "worker once (`signal-worker run` creates its topics) or create it"
        )


async def partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """The number of partitions of each of `topics` that exists."""
    counts: dict[str, int] = {}
    for topic in await admin.describe_topics(topics):
        if not topic.get("error_code") and topic.get("partitions"):
            counts[topic["topic"]] = len(topic["partitions"])
    return counts


async def _ensure_commands(
    admin: AIOKafkaAdminClient, kafka: KafkaSettings, existing: set[str]
) -> None:
    """The commands topic, co-partitioned with the signals topic (a user's commands and
    signals on partitions of the same number, applied in one order): created with the
    signals' partition count when missing; `WorkerError` in one line when its count differs."""
    signals, commands = kafka.signals_topic, kafka.commands_topic
    counts = await partition_counts(admin, [signals, commands])
    if signals not in counts and signals not in existing:  # just created: metadata may lag
        counts[signals] = kafka.topic_partitions
    if signals not in counts:
        raise WorkerError(f"SIGNALS_TOPIC {signals!r}: the brokers describe no partitions")
    if commands not in existing and commands not in counts:
        await _create(admin, kafka, [commands], {}, partitions=counts[signals])
        return
    if commands in counts and counts[commands] != counts[signals]:
        raise not_co_partitioned(
            kafka, counts[signals], counts[commands], "recreate one of them, or name another "
            "COMMANDS_TOPIC",
        )  # fmt: skip


def not_co_partitioned(
    kafka: KafkaSettings, signals: int, commands: int, remedy: str, *, now: str = ""
) -> WorkerError:
    """The one-line error when the commands topic has `commands` partitions and the
    signals topic `signals` (at start, or `now` at an assignment)."""
    return WorkerError(
        f"COMMANDS_TOPIC {kafka.commands_topic!r} {now}has {commands} partitions and "
        f"SIGNALS_TOPIC {kafka.signals_topic!r} {signals}: they must be co-partitioned (the "
        "same count, keyed by user id) so that a user's commands and signals are applied in "
        f"one order; {remedy}"
    )


async def _create(
    admin: AIOKafkaAdminClient,
    kafka: KafkaSettings,
    topics: list[str],
    configs: dict[str, str],
    *,
    partitions: int | None = None,
) -> None:
    metadata = await admin.describe_cluster()
    brokers = len(metadata.get("brokers", [])) or 1
    replication = min(3, brokers)
    try:
        await admin.create_topics(
            [
                NewTopic(
                    t, partitions or kafka.topic_partitions, replication, topic_configs=configs
                )
                for t in topics
            ]
        )
    except TopicAlreadyExistsError:
        log.info("topics_created_concurrently", topics=topics)
    log.info(
        "topics_created",
        topics=topics,
        partitions=partitions or kafka.topic_partitions,
        configs=configs,
    )


async def record_limits(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Each existing topic's `max.message.bytes`."""
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, t, configs={_MAX_MESSAGE_BYTES: None})
        for t in topics
    ]
    limits: dict[str, int] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                continue
            for entry in resource["config_entries"]:
                if entry["config_names"] == _MAX_MESSAGE_BYTES and entry["config_value"]:
                    limits[resource["resource_name"]] = int(entry["config_value"])
    return limits


async def group_members(kafka: KafkaSettings, *, timeout_s: float) -> int:
    """How many consumers are members of the worker's consumer group right now."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await start_client(admin, kafka, timeout_s=timeout_s)
    try:
        responses = await admin.describe_consumer_groups([kafka.consumer_group])
        group = responses[0].to_object()["groups"][0]
    except KafkaError as exc:
        raise unavailable(kafka, exc) from exc
    finally:
        await admin.close()
    return 0 if group["error_code"] else len(group["members"])


# How the consumer reads (the benchmark's raw consume reads with the same): from the stored
# offsets (else the earliest), committed records only, no auto-commit, and the fetch sizes.
FETCH_OPTIONS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "isolation_level": "read_committed",
    "fetch_max_bytes": 16 * 1024 * 1024,
    "max_partition_fetch_bytes": 2 * 1024 * 1024,
}
# The group membership timings the worker's consumer runs with.
GROUP_OPTIONS: dict[str, Any] = {
    "session_timeout_ms": 10_000,
    "heartbeat_interval_ms": 2_000,
    "rebalance_timeout_ms": 30_000,
    "metadata_max_age_ms": 30_000,
}
