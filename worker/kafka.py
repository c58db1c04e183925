"""Kafka client construction: connection and security settings, topics, start-up retries."""

from __future__ import annotations

import ssl
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
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


def unavailable(kafka: KafkaSettings, exc: BaseException) -> ServiceUnavailable:
    """The one-line error for a broker that cannot be reached or refuses us."""
    if isinstance(exc, BrokerRefusedError):
        return ServiceUnavailable(
            f"Kafka at {kafka.bootstrap_servers} refused the connection "
            f"(KAFKA_SECURITY_PROTOCOL={kafka.security_protocol}): {exc.args[0]}"
        )
    return ServiceUnavailable(
        f"cannot use Kafka at {kafka.bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS, "
        f"{kafka.security_protocol}): {_describe(exc)}"
    )


async def start_client(client: Any, kafka: KafkaSettings, *, timeout_s: float) -> None:  # noqa: ANN401
    """`await client.start()`, retried for at most `timeout_s`; `ServiceUnavailable` after.

    A broker that refuses our credentials or certificate fails at once, not after the
    retries: that does not pass on its own.
    """
    try:
        async for attempt in startup_retry(timeout_s):
            with attempt:
                await _start(client, kafka)
    except (KafkaError, OSError) as exc:
        await _close_quietly(client)
        raise unavailable(kafka, exc) from exc


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
    except KafkaError as exc:
        raise unavailable(kafka, exc) from exc
    finally:
        await admin.close()
    return missing
