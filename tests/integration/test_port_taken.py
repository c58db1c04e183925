"""A second `signal-worker run` beside a running one (issue 23, item 5): the HTTP port is
taken, so it stops in one line naming HTTP_PORT, before it joins the consumer group (a
member that joins and leaves would set off two rebalances of the running worker)."""

from __future__ import annotations

import socket

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.helpers.cli import assert_log_lines_then_one_error, run_cli
from tests.helpers.kafka import Topics
from tests.helpers.services import Services
from tests.helpers.workers import make_settings, worker_env
from worker.pipeline.kafka import group_members

pytestmark = pytest.mark.integration


async def _group_state(bootstrap: str, group: str) -> str:
    """The coordinator's state of `group`: `Dead` for one that never had a member."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return str(response.to_object()["groups"][0]["state"])


async def test_a_worker_whose_http_port_is_taken_stops_in_one_line_before_joining_the_group(
    services: Services, topics: Topics, db_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = worker_env(services, db_url, topics)
        env.update(HTTP_PORT=str(port), HTTP_HOST="127.0.0.1")

        run = await run_cli(env, "run", timeout_s=60)

    assert run.code == 1
    assert assert_log_lines_then_one_error(run.stderr, "run") == (
        f"signal-worker run: HTTP port {port} on 127.0.0.1 is taken (is another worker "
        "running here?): set HTTP_PORT to a free port (0 picks one)"
    )
    settings = make_settings(services, db_url, topics)
    assert await group_members(settings.kafka, timeout_s=10) == 0
    # Not even for a moment: a group that never had a member is unknown to its coordinator.
    assert await _group_state(services.kafka_bootstrap, topics.group) == "Dead"
