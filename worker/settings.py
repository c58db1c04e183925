"""The worker's settings: the environment variables of contract section 2, and a few more.

This is the only module that reads the environment. `Settings` is built once in
`__main__` and passed down; each component takes only its slice.
"""

from __future__ import annotations

import re
import ssl
from decimal import Decimal
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.domain.config_reading import DEFAULT_MAX_CONFIG_BYTES
from worker.domain.fills import Fees

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["auto", "json", "console"]

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_BROKER_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class DbSettings(BaseModel):
    """What the database pool needs."""

    model_config = ConfigDict(frozen=True)

    url: SecretStr
    pool_min_size: int
    pool_max_size: int
    connect_timeout_s: float
    command_timeout_s: float

    def masked_url(self) -> str:
        """The DSN with its password replaced by `***`, for logs and error messages."""
        return mask_dsn(self.url.get_secret_value())


class KafkaSettings(BaseModel):
    """What the Kafka clients need."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str
    signals_topic: str
    prices_topic: str
    dlq_topic: str
    consumer_group: str
    commands_topic: str
    security_protocol: SecurityProtocol
    sasl_mechanism: SaslMechanism | None
    sasl_username: str | None
    sasl_password: SecretStr | None
    ssl_cafile: str | None
    fetch_max_records: int
    request_timeout_s: float
    topic_partitions: int

    @property
    def input_topics(self) -> list[str]:
        """The topics the worker consumes: signals, prices, commands."""
        return [self.signals_topic, self.prices_topic, self.commands_topic]

    @property
    def user_topics(self) -> tuple[str, str]:
        """The topics keyed by user id and co-partitioned: signals, commands."""
        return (self.signals_topic, self.commands_topic)


class TradingSettings(BaseModel):
    """Simulation costs that the source system takes from its swap quotes, and the largest
    stored agent config the fan-out reads (UTF-8 bytes of its JSON text)."""

    model_config = ConfigDict(frozen=True)

    fees: Fees
    max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES


class Settings(BaseSettings):
    """Every setting, validated at start-up; names are exactly the environment variables."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=False, extra="ignore")

    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/signals")
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    signals_topic: str = "trading-signals"
    prices_topic: str = "token-prices"
    dlq_topic: str = "trading-signals.dlq"
    # Empty: `<SIGNALS_TOPIC>.commands` (`commands_topic_name`).
    commands_topic: str = ""
    # Empty: `<SIGNALS_TOPIC>.events` (`events_topic_name`).
    events_topic: str = ""
    # Whether the worker writes trade events to its outbox and relays them to EVENTS_TOPIC.
    events_enabled: bool = True
    # Hours a published event stays in the outbox (then pruned); 0: deleted once published.
    events_retention_hours: float = Field(default=0.0, ge=0, le=24 * 365)
    # The relay's readiness: unpublished events older than this make `/readyz` say so.
    events_stall_s: float = Field(default=60.0, gt=0, le=86_400)
    consumer_group: str = "signal-worker"
    # `signal-worker notify`'s webhook when `--url` is not given (a secret: not in `ps`).
    notify_webhook_url: SecretStr | None = None
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_host: str = Field(default="0.0.0.0", min_length=1)  # noqa: S104 - probes need it
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"

    # Beyond the contract: tuning, with production defaults.
    db_pool_min_size: int = Field(default=2, ge=1, le=100)
    db_pool_max_size: int = Field(default=10, ge=1, le=200)
    db_connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    db_command_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    kafka_fetch_max_records: int = Field(default=500, ge=1, le=100_000)
    kafka_request_timeout_s: float = Field(default=30.0, gt=0, le=600)
    kafka_topic_partitions: int = Field(default=12, ge=1, le=10_000)
    pipeline_concurrency: int = Field(default=4, ge=1, le=100)
    # A batch that meets server trouble (`worker.retry.SERVER_SQLSTATES`) is retried until
    # the server is well again (0: no limit), or until these give up (the worker exits 1).
    retry_max_attempts: int = Field(default=0, ge=0, le=1_000_000)
    retry_max_delay_s: float = Field(default=0.0, ge=0, le=7 * 86_400)
    retry_backoff_max_s: float = Field(default=5.0, gt=0, le=300)
    startup_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    shutdown_timeout_s: float = Field(default=8.0, gt=0, le=300)
    sim_network_fee_sol: Decimal = Field(default=Decimal("0.000005"), ge=0, le=1)
    sim_protocol_fee_bps: Decimal = Field(default=Decimal(0), ge=0, le=1000)
    # A tick's `ts` may lie at most this far ahead of its record's timestamp / the clock.
    price_max_future_s: float = Field(default=60.0, ge=0, le=86_400)
    # How late a record may become readable (after its event time, by the worker's clock) and
    # still be applied in event-time order (`worker.pipeline.timeline`); a later one is
    # decided when its partition promised nothing earlier. It must cover the producer's
    # send, the broker and one fetch (and any skew between the producers' clocks and the
    # worker's). The cost: a signal waits this long for a price partition that has nothing
    # newer to read (at rest); with prices flowing, until each has a tick after it.
    lateness_ms: int = Field(default=250, ge=0, le=3_600_000)
    # Order markers (`worker.pipeline.markers`): when users' records wait for a partition
    # that has nothing newer to read, the worker writes a marker into it instead of waiting
    # `LATENESS_MS` (a few ms instead of 250 at rest). The ledger is then a function of the
    # topics as they are, markers included: a tick written after a marker is decided after
    # it, even if stamped before it and within `LATENESS_MS`. Needs write access to the
    # prices and commands topics, and every reader of them upgraded (older workers
    # dead-letter markers). Off: the clock alone lets them go (markers other workers wrote
    # are honoured either way).
    order_markers: bool = False
    # At most one order marker a partition this often, by each worker (under load, with the
    # prices idle, that is the rate at which markers are written into each).
    order_marker_interval_ms: int = Field(default=20, ge=1, le=60_000)
    # Days of price ticks kept in token_price_history (for `report` and `replay`).
    price_history_days: int = Field(default=30, ge=1, le=3650)
    http_max_connections: int = Field(default=64, ge=1, le=10_000)
    http_request_timeout_s: float = Field(default=5.0, gt=0, le=300)
    # A stored agents.trading_config larger than this (its JSON text, UTF-8) is not read:
    # that agent's executions fail with the reason (realistic configs are about 1 KB).
    agent_config_max_bytes: int = Field(
        default=DEFAULT_MAX_CONFIG_BYTES, ge=1024, le=16 * 1024 * 1024
    )

    @field_validator("log_level", "kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("notify_webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: object) -> object:
        if isinstance(value, str | SecretStr):
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not text.strip():
                return None
            parts = urlsplit(text.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http(s):// URL with a host")
        return value

    @field_validator("kafka_ssl_cafile")
    @classmethod
    def _readable_cafile(cls, value: str | None) -> str | None:
        # Checked here, not when the first client starts: a bad path is a bad setting.
        if value is None:
            return None
        if not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        try:
            ssl.create_default_context(cafile=value)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"{value} is not a PEM file of CA certificates ({exc})") from exc
        return value

    @field_validator("database_url")
    @classmethod
    def _valid_dsn(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError("must name a host, as in postgresql://user@host:5432/db")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError("has an invalid port") from exc
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _valid_brokers(cls, value: str) -> str:
        brokers = [b.strip() for b in value.split(",") if b.strip()]
        if not brokers:
            raise ValueError("must list at least one broker as host:port")
        for broker in brokers:
            if not _BROKER_RE.match(broker) or not 0 < int(broker.rsplit(":", 1)[1]) < 65536:
                raise ValueError(f"{broker!r} is not host:port")
        return ",".join(brokers)

    @field_validator("commands_topic", "events_topic")
    @classmethod
    def _valid_optional_topic(cls, value: str) -> str:
        return "" if not value.strip() else cls._valid_name(value.strip())

    @field_validator("signals_topic", "prices_topic", "dlq_topic", "consumer_group")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _TOPIC_RE.match(value) or value in (".", ".."):
            raise ValueError("must be 1 to 249 characters of letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            if self.kafka_sasl_mechanism is None:
                raise ValueError(
                    f"KAFKA_SASL_MECHANISM is required with KAFKA_SECURITY_PROTOCOL="
                    f"{self.kafka_security_protocol}"
                )
            if not self.kafka_sasl_username or self.kafka_sasl_password is None:
                raise ValueError(
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with SASL"
                )
        if len({self.signals_topic, self.prices_topic, self.dlq_topic}) != 3:
            raise ValueError("SIGNALS_TOPIC, PRICES_TOPIC and DLQ_TOPIC must differ")
        topics = {self.signals_topic, self.prices_topic, self.dlq_topic}
        if self.commands_topic_name in topics:
            raise ValueError(
                "COMMANDS_TOPIC must differ from SIGNALS_TOPIC, PRICES_TOPIC, DLQ_TOPIC"
            )
        if self.events_topic_name in {*topics, self.commands_topic_name}:
            raise ValueError(
                "EVENTS_TOPIC must differ from the topics the worker consumes and DLQ_TOPIC"
            )
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        if 2 * self.pipeline_concurrency > self.db_pool_max_size:
            raise ValueError(
                "DB_POOL_MAX_SIZE must be at least twice PIPELINE_CONCURRENCY (a lane per topic "
                "each needs a connection)"
            )
        return self

    @property
    def db(self) -> DbSettings:
        """The database slice."""
        return DbSettings(
            url=self.database_url,
            pool_min_size=self.db_pool_min_size,
            pool_max_size=self.db_pool_max_size,
            connect_timeout_s=self.db_connect_timeout_s,
            command_timeout_s=self.db_command_timeout_s,
        )

    @property
    def events_topic_name(self) -> str:
        """EVENTS_TOPIC, else `<SIGNALS_TOPIC>.events`."""
        return self.events_topic or f"{self.signals_topic}.events"

    @property
    def commands_topic_name(self) -> str:
        """COMMANDS_TOPIC, else `<SIGNALS_TOPIC>.commands`."""
        return self.commands_topic or f"{self.signals_topic}.commands"

    @property
    def kafka(self) -> KafkaSettings:
        """The Kafka slice."""
        return KafkaSettings(
            bootstrap_servers=self.kafka_bootstrap_servers,
            signals_topic=self.signals_topic,
            prices_topic=self.prices_topic,
            dlq_topic=self.dlq_topic,
            commands_topic=self.commands_topic_name,
            consumer_group=self.consumer_group,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            fetch_max_records=self.kafka_fetch_max_records,
            request_timeout_s=self.kafka_request_timeout_s,
            topic_partitions=self.kafka_topic_partitions,
        )

    @property
    def trading(self) -> TradingSettings:
        """The simulation-cost slice: the one `Fees` of every buy, sale and DCA buy."""
        return TradingSettings(
            fees=Fees(self.sim_network_fee_sol, self.sim_protocol_fee_bps),
            max_config_bytes=self.agent_config_max_bytes,
        )


# A URL's scheme and everything after it up to whitespace: one token to parse.
_URL_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")
# `password=value` of the keyword form and of a URL's query; a value may be 'quoted'.
_PASSWORD_PARAM = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^&\s]*)", re.IGNORECASE)


def _mask_url(url: str) -> str:
    """The URL with its password replaced by `***`, parsed as asyncpg parses a DSN: the
    userinfo runs to the *last* `@` of the authority, so a raw `@` in a password is still
    part of the password."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        scheme, _, rest = url.partition("://")
        if "@" in rest:
            # A raw `/`, `?` or `#` in a password ends the authority early for any parser;
            # mask all of it up to the last `@` rather than show a piece of it.
            userinfo, _, after = rest.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            return f"{scheme}://{user.split('/')[0]}{':***' if colon else '***'}@{after}"
        return url
    user, colon, _ = userinfo.partition(":")
    parts = parts._replace(netloc=f"{user}{':***' if colon else ''}@{hostport}")
    masked = urlunsplit(parts)
    # urlunsplit drops an empty query or fragment marker the original had: keep the text.
    return masked + url[len(masked) :] if url.startswith(masked) else masked


def mask_dsn(text: str) -> str:
    """`text` with every password it holds replaced by `***`: those of URLs (each URL is
    parsed, see `_mask_url`) and `password=` parameters (keyword DSNs and URL queries)."""
    masked = _URL_TOKEN.sub(lambda m: _mask_url(m.group(0)), text)
    return _PASSWORD_PARAM.sub(lambda m: m.group(1) + "***", masked)


def describe_error(exc: ValidationError) -> str:
    """One line naming the first bad variable and why, for the start-up error message."""
    first = exc.errors()[0]
    loc = first.get("loc") or ()
    name = str(loc[0]).upper() if loc else "settings"
    message = str(first.get("msg", "is invalid")).removeprefix("Value error, ")
    if not loc:
        return f"invalid settings: {message}"
    return f"invalid setting {name}: {message}"


def load_settings() -> Settings:
    """Build `Settings` from the environment (raises `ValidationError` on a bad value)."""
    return Settings()
