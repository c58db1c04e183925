"""Settings: the contract's defaults, one clear line for each bad value, Kafka security options.

The unreachable-service cases run the real CLI (`python -m worker ...`) as a deploy would,
all at once in the background, so they take as long as one bounded start-up retry
(STARTUP_TIMEOUT_S=3), not the sum.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from tests.helpers.books import TOKEN_A
from tests.helpers.certificates import make_certificate
from tests.helpers.cli import CliRun, assert_log_lines_then_one_error, run_cli
from worker.__main__ import main
from worker.pipeline.kafka import client_options
from worker.settings import Settings, describe_error, mask_dsn

SETTING_NAMES = [name.upper() for name in Settings.model_fields]
UNREACHABLE_DB = "postgresql://postgres:hunter2-db@127.0.0.1:1/signals"
UNREACHABLE_KAFKA = "127.0.0.1:1"
USER_ID = "0b7d8c39-5a8e-4cf4-9c3e-8f1d2a6b7c01"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting from the developer's environment."""
    for name in os.environ:
        if name.upper() in SETTING_NAMES:
            monkeypatch.delenv(name)


# --- defaults ---------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_every_contract_variable_has_its_contract_default() -> None:
    settings = Settings()
    assert settings.database_url.get_secret_value() == (
        "postgresql://postgres@127.0.0.1:5432/signals"
    )
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.signals_topic == "trading-signals"
    assert settings.prices_topic == "token-prices"
    assert settings.dlq_topic == "trading-signals.dlq"
    assert settings.consumer_group == "signal-worker"
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.kafka_sasl_mechanism is None
    assert settings.kafka_sasl_username is None
    assert settings.kafka_sasl_password is None
    assert settings.kafka_ssl_cafile is None
    assert settings.http_port == 8080
    assert settings.log_level == "INFO"
    assert settings.log_format == "auto"


@pytest.mark.usefixtures("clean_env")
def test_contract_variables_are_read_from_the_environment_without_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@db:5432/x")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", " a:9092, b:9093 ")
    monkeypatch.setenv("SIGNALS_TOPIC", "s")
    monkeypatch.setenv("PRICES_TOPIC", "p")
    monkeypatch.setenv("DLQ_TOPIC", "d")
    monkeypatch.setenv("CONSUMER_GROUP", "g")
    monkeypatch.setenv("HTTP_PORT", "9000")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_FORMAT", "Console")
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "a:9092,b:9093"
    assert (settings.signals_topic, settings.prices_topic, settings.dlq_topic) == ("s", "p", "d")
    assert (settings.consumer_group, settings.http_port) == ("g", 9000)
    assert (settings.log_level, settings.log_format) == ("DEBUG", "console")


def test_secrets_are_secret_strings_that_never_show_in_repr() -> None:
    settings = Settings.model_validate(
        {
            "database_url": "postgresql://u:hunter2-db@db:5432/x",
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-256",
            "kafka_sasl_username": "worker",
            "kafka_sasl_password": "hunter2-sasl",
        }
    )
    assert isinstance(settings.database_url, SecretStr)
    assert isinstance(settings.kafka_sasl_password, SecretStr)
    shown = f"{settings!r} {settings} {settings.db!r} {settings.kafka!r}"
    assert "hunter2" not in shown
    assert settings.db.masked_url() == "postgresql://u:***@db:5432/x"


# --- Kafka security options ---------------------------------------------------------------


def test_sasl_options_carry_mechanism_user_and_password() -> None:
    # Lower case as a deploy may write it; normalised by the settings.
    settings = Settings.model_validate(
        {
            "kafka_security_protocol": "sasl_plaintext",
            "kafka_sasl_mechanism": "scram-sha-512",
            "kafka_sasl_username": "worker",
            "kafka_sasl_password": "worker-secret",
        }
    )
    options = client_options(settings.kafka)
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "worker"
    assert options["sasl_plain_password"] == "worker-secret"
    assert "ssl_context" not in options


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    """A self-signed CA certificate made with openssl."""
    cert, _ = make_certificate(tmp_path, "ca", common_name="signal-worker test CA", ip=None)
    return cert


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_builds_a_verifying_context_that_trusts_the_ca_file(
    ca_file: Path, protocol: str
) -> None:
    fields: dict[str, Any] = {"kafka_security_protocol": protocol, "kafka_ssl_cafile": str(ca_file)}
    if protocol == "SASL_SSL":
        fields.update(
            kafka_sasl_mechanism="PLAIN", kafka_sasl_username="w", kafka_sasl_password="p"
        )
    settings = Settings.model_validate(fields)
    context = client_options(settings.kafka)["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    certificates: list[Any] = context.get_ca_certs()
    subjects = [dict(item[0] for item in ca["subject"]) for ca in certificates]
    assert {"commonName": "signal-worker test CA"} in subjects


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "no such file"), ("not a certificate\n", "is not a PEM file of CA certificates")],
    ids=["missing", "not_pem"],
)
def test_a_bad_ca_file_is_a_settings_error_naming_the_variable(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValidationError) as caught:
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(path))
    message = describe_error(caught.value)
    assert message.startswith("invalid setting KAFKA_SSL_CAFILE: ")
    assert expected in message


# --- the CLI: bad values and unreachable services -------------------------------------------


@dataclass(frozen=True)
class Case:
    """One CLI run: its environment (on top of a clean one), command, and what it must say."""

    env: dict[str, str]
    names: tuple[str, ...]
    args: tuple[str, ...] = ("migrate",)


SASL = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "KAFKA_SASL_USERNAME": "worker",
    "KAFKA_SASL_PASSWORD": "worker-secret",
}

BAD_VALUES = {
    "http_port_not_a_number": Case({"HTTP_PORT": "abc"}, ("HTTP_PORT",)),
    "http_port_out_of_range": Case({"HTTP_PORT": "70000"}, ("HTTP_PORT",)),
    "log_level_unknown": Case({"LOG_LEVEL": "LOUD"}, ("LOG_LEVEL",)),
    "log_format_unknown": Case({"LOG_FORMAT": "xml"}, ("LOG_FORMAT",)),
    "security_protocol_unknown": Case(
        {"KAFKA_SECURITY_PROTOCOL": "FOO"}, ("KAFKA_SECURITY_PROTOCOL",)
    ),
    "sasl_without_mechanism": Case({**SASL, "KAFKA_SASL_MECHANISM": ""}, ("KAFKA_SASL_MECHANISM",)),
    "sasl_mechanism_unknown": Case(
        {**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, ("KAFKA_SASL_MECHANISM",)
    ),
    "sasl_without_user": Case({**SASL, "KAFKA_SASL_USERNAME": ""}, ("KAFKA_SASL_USERNAME",)),
    "sasl_without_password": Case({**SASL, "KAFKA_SASL_PASSWORD": ""}, ("KAFKA_SASL_PASSWORD",)),
    "database_url_scheme": Case(
        {"DATABASE_URL": "mysql://root:hunter2-db@db/signals"}, ("DATABASE_URL",)
    ),
    "database_url_port": Case(
        {"DATABASE_URL": "postgresql://u:hunter2-db@db:port/x"}, ("DATABASE_URL",)
    ),
    "bootstrap_empty": Case({"KAFKA_BOOTSTRAP_SERVERS": ""}, ("KAFKA_BOOTSTRAP_SERVERS",)),
    "bootstrap_without_port": Case(
        {"KAFKA_BOOTSTRAP_SERVERS": "kafka"}, ("KAFKA_BOOTSTRAP_SERVERS",)
    ),
    "topic_with_spaces": Case({"SIGNALS_TOPIC": "trading signals"}, ("SIGNALS_TOPIC",)),
    "dlq_topic_with_slash": Case({"DLQ_TOPIC": "a/b"}, ("DLQ_TOPIC",)),
    "group_empty": Case({"CONSUMER_GROUP": ""}, ("CONSUMER_GROUP",)),
    "topics_equal": Case({"PRICES_TOPIC": "trading-signals"}, ("SIGNALS_TOPIC", "PRICES_TOPIC")),
    "ca_file_missing": Case(
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
        ("KAFKA_SSL_CAFILE",),
    ),
    "bad_value_for_run": Case({"HTTP_PORT": "-1"}, ("HTTP_PORT",), ("run",)),
    "pipeline_concurrency_zero": Case({"PIPELINE_CONCURRENCY": "0"}, ("PIPELINE_CONCURRENCY",)),
    "pipeline_concurrency_above_pool": Case(
        {"PIPELINE_CONCURRENCY": "6", "DB_POOL_MAX_SIZE": "10"},
        ("PIPELINE_CONCURRENCY", "DB_POOL_MAX_SIZE"),
    ),
}

UNREACHABLE = {
    "migrate_database": Case({"DATABASE_URL": UNREACHABLE_DB}, ("DATABASE_URL",)),
    "run_database": Case({"DATABASE_URL": UNREACHABLE_DB}, ("DATABASE_URL",), ("run",)),
    "check_database": Case({"DATABASE_URL": UNREACHABLE_DB}, ("DATABASE_URL",), ("check",)),
    "publish_kafka": Case(
        {"KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE_KAFKA},
        ("KAFKA_BOOTSTRAP_SERVERS",),
        (
            "publish",
            "--user-id",
            USER_ID,
            "--token-address",
            TOKEN_A,
            "--signal-type",
            "manual",
            "--signal-strength",
            "3",
        ),
    ),
}


def _env(case: Case) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in SETTING_NAMES and not k.startswith("PYTEST")
    }
    # Where a bad value slipped through, fail fast rather than touch a real service.
    env.update(
        DATABASE_URL=UNREACHABLE_DB,
        KAFKA_BOOTSTRAP_SERVERS=UNREACHABLE_KAFKA,
        STARTUP_TIMEOUT_S="3",
        HTTP_PORT="0",
    )
    env.update(case.env)
    return env


def _run(case: Case) -> CliRun:
    """The real CLI; in a thread's own event loop, so that the cases can run side by side."""
    return asyncio.run(run_cli(_env(case), *case.args, timeout_s=60))


def _check_bad_value(result: CliRun, case: Case) -> None:
    assert result.code == 2, result
    assert len(result.stderr) == 1, result.stderr
    [line] = result.stderr
    assert line.startswith("signal-worker: invalid setting"), line
    for variable in case.names:
        assert variable in line
    assert "hunter2" not in line
    assert result.stdout == ""


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_a_bad_value_exits_2_with_one_line_naming_the_variable(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `python -m worker ARGS` is `sys.exit(main(ARGS))`; a bad setting returns before
    # anything else is set up, so this runs in-process (the next test runs the real CLI).
    case = BAD_VALUES[name]
    for variable, value in _env(case).items():
        monkeypatch.setenv(variable, value)
    code = main(list(case.args))
    out, err = capsys.readouterr()
    _check_bad_value(CliRun(code, out, err.splitlines()), case)


def test_a_bad_value_through_python_dash_m_exits_2_with_one_line() -> None:
    _check_bad_value(
        _run(BAD_VALUES["http_port_not_a_number"]), BAD_VALUES["http_port_not_a_number"]
    )


@pytest.fixture(scope="module")
def unreachable() -> Iterator[dict[str, Future[CliRun]]]:
    """Every unreachable-service case, started at once in the background."""
    with ThreadPoolExecutor(max_workers=len(UNREACHABLE)) as pool:
        yield {name: pool.submit(_run, case) for name, case in UNREACHABLE.items()}


@pytest.mark.parametrize("name", list(UNREACHABLE))
def test_an_unreachable_service_ends_in_one_clear_line_after_bounded_retries(
    unreachable: dict[str, Future[CliRun]], name: str
) -> None:
    case = UNREACHABLE[name]
    result = unreachable[name].result(timeout=60)
    assert result.code == 1, result
    assert "hunter2" not in "\n".join(result.stderr)
    # Everything before the error is log lines, JSON all of them (aiokafka's included).
    last = assert_log_lines_then_one_error(result.stderr, case.args[0])
    assert case.names[0] in last
    assert any('"retrying_after_transient_error"' in line for line in result.stderr[:-1])


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        # A raw `@` in the password: the userinfo runs to the last `@`, as asyncpg reads it.
        ("postgresql://postgres:p@SECRETTAIL@host/db", "postgresql://postgres:***@host/db"),
        ("postgresql://u:secret@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql://u:p%40ss@db/x", "postgresql://u:***@db/x"),
        ("postgres://:only-a-password@db/x", "postgres://:***@db/x"),
        ("postgresql://u@db/x?password=abc&sslmode=require",
         "postgresql://u@db/x?password=***&sslmode=require"),
        # A raw `?`, `/` or `#` ends the authority early: all of the userinfo is hidden.
        ("postgresql://u:pa?ss@db/x", "postgresql://u:***@db/x"),
        ("postgresql://u:pa/ss@db/x", "postgresql://u:***@db/x"),
        ("postgresql://u:pa#ss@db/x", "postgresql://u:***@db/x"),
        ("host=db password=hunter2 dbname=x", "host=db password=*** dbname=x"),
        ("host=db password='a b\\' c' dbname=x", "host=db password=*** dbname=x"),
        ("postgresql://db/x", "postgresql://db/x"),
        ("reaching postgresql://u:pw@h/db: refused", "reaching postgresql://u:***@h/db: refused"),
    ],
)  # fmt: skip
def test_dsn_passwords_are_masked_by_parsing_the_dsn(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown
