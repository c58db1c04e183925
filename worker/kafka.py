"""Kafka client construction: connection and security settings, topics, start-up retries."""

from __future__ import annotations

from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from worker.errors import ServiceUnavailable
from worker.retry import describe, startup_retry
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


def unavailable(kafka: KafkaSettings, exc: BaseException) -> ServiceUnavailable:
    """The one-line error for a broker that cannot be reached or refuses us."""
    return ServiceUnavailable(
        f"cannot use Kafka at {kafka.bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS, "
        f"{kafka.security_protocol}): {describe(exc)}"
    )


async def start_client(client: Any, kafka: KafkaSettings, *, timeout_s: float) -> None:
    """`await client.start()`, retried for at most `timeout_s`; `ServiceUnavailable` after."""
    try:
        async for attempt in startup_retry(timeout_s):
            with attempt:
                await client.start()
    except KafkaError as exc:
        await _close_quietly(client)
        raise unavailable(kafka, exc) from exc
    except OSError as exc:
        await _close_quietly(client)
        raise unavailable(kafka, exc) from exc


async def _close_quietly(client: Any) -> None:
    closer = getattr(client, "stop", None) or client.close
    try:
        await closer()
    except (KafkaError, OSError) as exc:
        log.debug("kafka_client_close_failed", error=describe(exc))


def make_producer(kafka: KafkaSettings) -> AIOKafkaProducer:
    """The producer of dead letters and published signals: acks from all in-sync replicas."""
    return AIOKafkaProducer(
        **client_options(kafka),
        acks="all",
        enable_idempotence=True,
        max_request_size=2_097_152,
        linger_ms=5,
    )


async def ensure_topics(kafka: KafkaSettings, *, timeout_s: float) -> list[str]:
    """Create the signal, price and dead-letter topics if missing; return those created."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await start_client(admin, kafka, timeout_s=timeout_s)
    try:
        wanted = [kafka.signals_topic, kafka.prices_topic, kafka.dlq_topic]
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return []
        metadata = await admin.describe_cluster()
        brokers = len(metadata.get("brokers", [])) or 1
        replication = min(3, brokers)
        try:
            await admin.create_topics(
                [NewTopic(t, kafka.topic_partitions, replication) for t in missing]
            )
        except TopicAlreadyExistsError:
            log.info("topics_created_concurrently", topics=missing)
        log.info("topics_created", topics=missing, partitions=kafka.topic_partitions)
        return missing
    except KafkaError as exc:
        raise unavailable(kafka, exc) from exc
    finally:
        await admin.close()
