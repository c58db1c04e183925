"""Kafka security against the real broker: SASL end to end, refused credentials, refused TLS.

The local broker of `scripts/services.sh` has a SASL_PLAINTEXT listener (PLAIN,
SCRAM-SHA-256, SCRAM-SHA-512; user `worker`, password `worker-secret`) next to its
PLAINTEXT one. It has no TLS listener: the TLS test runs the client against a TLS server
of its own whose certificate the configured CA did not sign, which fails in the handshake,
before any Kafka request.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, make_account, set_sol_price
from tests.helpers.certificates import make_certificate
from tests.helpers.cli import assert_log_lines_then_one_error, run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import WorkerProcess, env_for, make_settings, wait_for_count, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SASL_USER = "worker"
SASL_PASSWORD = "worker-secret"
DB_PASSWORD = "dbpass-never-logged"
MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]


@pytest.fixture(scope="module")
def sasl_bootstrap(services: Services) -> str:
    """The SASL_PLAINTEXT listener of the tests' broker."""
    configured = os.environ.get("TEST_KAFKA_SASL_BOOTSTRAP")
    if configured:
        return configured
    if services.source != "local":
        pytest.skip(
            f"services come from {services.source}; set TEST_KAFKA_SASL_BOOTSTRAP to "
            "a SASL_PLAINTEXT listener with user worker / worker-secret"
        )
    host = services.kafka_bootstrap.rsplit(":", 1)[0]
    return f"{host}:{os.environ.get('LOCAL_KAFKA_SASL_PORT', '9094')}"


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':')[0]}:{password}@{host}"))


def sasl_env(
    env: dict[str, str], bootstrap: str, mechanism: str, password: str = SASL_PASSWORD
) -> dict[str, str]:
    return {
        **env,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_USERNAME": SASL_USER,
        "KAFKA_SASL_PASSWORD": password,
    }


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_an_authenticated_worker_turns_a_signal_into_a_trade_and_logs_no_secret(
    services: Services,
    db_url: str,
    topics: Topics,
    db_conn: asyncpg.Connection,
    sasl_bootstrap: str,
    mechanism: str,
) -> None:
    account = await make_account(db_conn)
    await set_sol_price(db_conn, "100")
    settings = make_settings(services, with_password(db_url, DB_PASSWORD), topics)
    env = sasl_env({**env_for(settings), "LOG_LEVEL": "DEBUG"}, sasl_bootstrap, mechanism)
    worker = WorkerProcess(env).start()
    try:
        await worker.wait_started()
        code, out, err = await run_cli(
            env,
            "publish",
            "--user-id",
            str(account.user_id),
            "--token-address",
            TOKEN_A,
            "--signal-type",
            "Velocity (Dex Boost Detection)",
            "--signal-strength",
            "3",
            "--price-usd",
            "0.5",
            "--idempotency-key",
            f"sasl-{mechanism}",
        )
        assert code == 0, err
        assert "sent 1 signal to" in out
        await wait_for_count(
            db_url, "SELECT count(*) FROM signal_executions WHERE status = 'success'", 1
        )
    finally:
        exit_code = worker.terminate()
        print(worker.tail(60))
    assert exit_code == 0, worker.tail()
    assert any('"worker_stopped"' in line for line in worker.lines)
    everything = "\n".join(worker.lines + err)
    assert SASL_PASSWORD not in everything
    assert DB_PASSWORD not in everything
    assert f"postgresql://postgres:***@{urlsplit(db_url).hostname}" in everything


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
async def test_a_wrong_password_stops_the_worker_at_once_with_one_clear_line(
    services: Services, db_url: str, topics: Topics, sasl_bootstrap: str, mechanism: str
) -> None:
    wrong = "wrong-password-never-logged"
    env = sasl_env(
        {**worker_env(services, db_url, topics), "STARTUP_TIMEOUT_S": "5"},
        sasl_bootstrap,
        mechanism,
        wrong,
    )
    code, _, lines = await run_cli(env, "run")
    assert code == 1
    last = assert_log_lines_then_one_error(lines, "run")
    assert "SASL authentication failed for user 'worker'" in last
    assert mechanism in last
    assert "KAFKA_SASL_PASSWORD" in last
    assert not any('"retrying_after_transient_error"' in line for line in lines), (
        "refused credentials must not be retried"
    )
    assert wrong not in "\n".join(lines)


async def test_run_with_an_unreachable_broker_ends_in_one_line_after_bounded_retries(
    services: Services, db_url: str, topics: Topics
) -> None:
    env = {
        **worker_env(services, db_url, topics),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "STARTUP_TIMEOUT_S": "3",
    }
    code, _, lines = await run_cli(env, "run")
    assert code == 1
    last = assert_log_lines_then_one_error(lines, "run")
    assert "cannot use Kafka at 127.0.0.1:1 (KAFKA_BOOTSTRAP_SERVERS, PLAINTEXT)" in last
    assert "KafkaConnectionError: KafkaConnectionError" not in last
    assert any('"retrying_after_transient_error"' in line for line in lines)


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A TLS server with a certificate of its own; yields (port, a CA file that did not sign it)."""
    server_cert, server_key = make_certificate(tmp_path, "server")
    other_ca, _ = make_certificate(tmp_path, "other-ca")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert, server_key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        del reader
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], other_ca
    finally:
        server.close()
        await server.wait_closed()


async def test_a_broker_certificate_the_ca_file_did_not_sign_fails_at_once(
    services: Services, db_url: str, topics: Topics, tls_server: tuple[int, Path]
) -> None:
    port, other_ca = tls_server
    env = {
        **worker_env(services, db_url, topics),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(other_ca),
        "STARTUP_TIMEOUT_S": "5",
    }
    code, _, lines = await run_cli(
        env,
        "publish",
        "--user-id",
        "0b7d8c39-5a8e-4cf4-9c3e-8f1d2a6b7c01",
        "--token-address",
        TOKEN_A,
        "--signal-type",
        "manual",
        "--signal-strength",
        "3",
    )
    assert code == 1
    last = assert_log_lines_then_one_error(lines, "publish")
    assert f"TLS handshake with 127.0.0.1:{port} failed (check KAFKA_SSL_CAFILE)" in last
    assert "CERTIFICATE_VERIFY_FAILED" in last
    assert not any('"retrying_after_transient_error"' in line for line in lines)
