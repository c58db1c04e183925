"""The deployment files agree with the contract and with each other; no Docker engine needed.

Dockerfile, .dockerignore, docker-compose.yml, the Prometheus config and the Grafana
provisioning and dashboard are parsed and checked: every contract setting reaches the worker
container, the Kafka image is the version the local broker runs, health checks and start-up
order hold, and the dashboard queries only metrics the worker exposes.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.services import KAFKA_IMAGE, POSTGRES_IMAGE
from worker.db.migrations import default_schema_dir
from worker.metrics import Metrics
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES_SCRIPT = ROOT / "scripts" / "services.sh"
ENGINE_SCRIPT = ROOT / "scripts" / "container-engine.sh"
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "signal-worker.json"

# contract.md section 2: every name, exactly.
CONTRACT_VARIABLES = (
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "SIGNALS_TOPIC",
    "PRICES_TOPIC",
    "DLQ_TOPIC",
    "CONSUMER_GROUP",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "HTTP_PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
)

# What the worker exposes on /metrics, by Prometheus type: read from its registry.
METRICS = {
    family.name + ("_total" if family.type == "counter" else ""): family.type
    for family in Metrics().registry.collect()
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_INTERPOLATION_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# What a user's shell or .env gives the compose file: only what it requires (`${NAME:?...}`).
SHELL_ENV = {"GRAFANA_ADMIN_PASSWORD": "from-dot-env", "GRAFANA_DB_PASSWORD": "from-dot-env-too"}
_DURATION_RE = re.compile(r"^(\d+)(ms|s|m|h)$")
_METRIC_RE = re.compile(r"\bsignal_worker_[a-z0-9_]+")


def _mapping(value: object, what: str) -> dict[str, Any]:
    assert isinstance(value, dict), f"{what} must be a mapping, not {type(value).__name__}"
    return value


def _load_yaml(path: Path) -> dict[str, Any]:
    return _mapping(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))


def _interpolate(value: str, env: dict[str, str] = SHELL_ENV) -> str:
    """Compose's interpolation with `env` as the environment: `${NAME:-default}` and
    `${NAME-default}` fall back to the default, `${NAME:?error}` and `${NAME?error}` fail
    without a value, and `$$` is `$`."""

    def value_of(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        given = env.get(name)
        is_set = given is not None and (given != "" or not operator.startswith(":"))
        if is_set:
            return str(given)
        if operator.endswith("?"):
            raise KeyError(f"{name} is required: {argument}")
        return argument

    return _INTERPOLATION_RE.sub(value_of, value).replace("$$", "$")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, list or mapping form, interpolated with the defaults."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    env = _mapping(raw, "environment")
    return {key: _interpolate("" if value is None else str(value)) for key, value in env.items()}


def _duration_s(value: str) -> float:
    match = _DURATION_RE.match(value)
    assert match, f"{value!r} is not a duration like 5s"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    return int(match.group(1)) * scale


def _healthcheck_command(service: dict[str, Any]) -> str:
    test = _mapping(service.get("healthcheck"), "healthcheck")["test"]
    assert isinstance(test, list), "write healthcheck tests in list form"
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(str(part) for part in test[1:])


def _container_ports(service: dict[str, Any]) -> set[int]:
    """The container side of each `ports:` entry (short syntax)."""
    return {int(str(entry).rsplit(":", 1)[-1].split("/")[0]) for entry in service["ports"]}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: _mapping(spec, f"service {name}")
        for name, spec in _mapping(compose["services"], "services").items()
    }


@pytest.fixture(scope="module")
def worker_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return _environment(services["worker"])


@pytest.fixture(scope="module")
def worker_port(worker_env: dict[str, str]) -> int:
    return int(worker_env["HTTP_PORT"])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return _mapping(json.loads(DASHBOARD.read_text(encoding="utf-8")), "dashboard")


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return _load_yaml(PROMETHEUS_CONFIG)


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    config = _load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    return _mapping(source, "datasource")


# ---------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _env_value(stage: list[tuple[str, str]], name: str) -> str | None:
    for keyword, args in reversed(stage):
        if keyword == "ENV":
            match = re.search(rf"(?:^|\s){name}=(\S+)", args)
            if match:
                return match.group(1)
    return None


def test_dockerfile_builds_in_two_stages_from_python_311_slim() -> None:
    froms = [args for keyword, args in _dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder stage and a runtime stage"
    assert re.fullmatch(r"python:3\.11-slim\s+AS\s+builder", froms[0], re.IGNORECASE)
    assert froms[-1].split()[0] == "python:3.11-slim"
    copies = [args for keyword, args in _final_stage() if keyword == "COPY"]
    assert any(args.startswith("--from=builder /opt/venv") for args in copies), copies


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert user == "10001"


def test_dockerfile_entrypoint_runs_the_worker() -> None:
    stage = _final_stage()
    (entrypoint,) = [json.loads(args) for keyword, args in stage if keyword == "ENTRYPOINT"]
    (cmd,) = [json.loads(args) for keyword, args in stage if keyword == "CMD"]
    assert entrypoint in (["signal-worker"], ["python", "-m", "worker"])
    assert cmd == ["run"]
    assert any(keyword == "EXPOSE" and args.split() == ["8080"] for keyword, args in stage)
    assert _env_value(stage, "PYTHONDONTWRITEBYTECODE") == "1"
    assert _env_value(stage, "PYTHONUNBUFFERED") == "1"
    assert any(keyword == "LABEL" for keyword, _ in stage)


def test_dockerfile_healthcheck_polls_healthz_on_http_port() -> None:
    (check,) = [args for keyword, args in _final_stage() if keyword == "HEALTHCHECK"]
    assert "CMD" in check.split()
    assert "urllib" in check, "no curl in the slim image"
    assert "http://127.0.0.1:${HTTP_PORT:-8080}/healthz" in check


def _stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the stage `FROM ... AS name`."""
    instructions = _dockerfile_instructions()
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    for begin, end in zip(starts, [*starts[1:], len(instructions)], strict=True):
        if instructions[begin][1].lower().endswith(f" as {name}"):
            return instructions[begin:end]
    pytest.fail(f"the Dockerfile has no stage {name}")


def test_image_installs_the_locked_dependencies_with_hashes_then_the_wheel() -> None:
    builder = _stage("builder")
    copies = [args for keyword, args in builder if keyword == "COPY"]
    runs = " ".join(args for keyword, args in builder if keyword == "RUN")
    assert any("requirements.lock" in c and "requirements-build.lock" in c for c in copies)
    assert "--require-hashes -r requirements.lock" in runs
    assert "--require-hashes -r requirements-build.lock" in runs
    # The lock layer comes before the sources, so a code change reuses it.
    lock_copy = next(i for i, (k, a) in enumerate(builder) if k == "COPY" and ".lock" in a)
    source_copy = next(i for i, (k, a) in enumerate(builder) if k == "COPY" and "worker/" in a)
    assert lock_copy < source_copy
    assert "pip wheel --no-deps --no-build-isolation" in runs
    assert "install --no-deps --no-index /build/dist/*.whl" in runs
    assert runs.rstrip().endswith("check"), "`pip check`: the lock satisfies pyproject.toml"


def test_image_runs_the_worker_from_site_packages() -> None:
    stage = _final_stage()
    assert _env_value(stage, "PYTHONPATH") is None, "the wheel carries everything it needs"
    assert not [a for k, a in stage if k == "COPY" and not a.startswith("--from=builder")]
    assert any(k == "RUN" and "load_migrations" in a for k, a in stage)


def test_image_version_label_defaults_to_the_project_version() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    args = [a for k, a in _final_stage() if k == "ARG"]
    assert f"VERSION={version}" in args, "the Dockerfile's ARG VERSION default is stale"
    labels = " ".join(a for k, a in _final_stage() if k == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_schema_files_are_package_data_and_schema_links_to_them() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    schema = ROOT / "worker" / "schema"
    sql = sorted(schema.glob("*.sql"))
    assert sql
    assert all(fnmatch.fnmatch(f"schema/{p.name}", package_data["worker"][0]) for p in sql)
    assert Path(str(default_schema_dir())).resolve() == schema.resolve()
    link = ROOT / "schema"
    assert link.is_symlink(), "schema/ is a link to worker/schema (one source of the SQL)"
    assert link.resolve() == schema.resolve()


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".git", ".venv", ".services", "**/__pycache__", ".pytest_cache", ".env"):
        assert required in patterns, f".dockerignore should exclude {required}"
    excludes = [p.removeprefix("**/") for p in patterns if not p.startswith("!")]
    needed_files = (
        "pyproject.toml",
        "README.md",
        "requirements.lock",
        "requirements-build.lock",
        "worker",
        "worker/__init__.py",
        "worker/schema/0001_x.sql",
    )
    for needed in needed_files:
        hits = [p for p in excludes if fnmatch.fnmatch(needed, p) or needed.startswith(p + "/")]
        assert not hits, f"{needed} is excluded by {hits}, but the image needs it"


# ---------------------------------------------------------------------------- compose


def test_compose_defines_the_stack(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert "version" not in compose, "the Compose specification has no version key"
    assert set(services) == {"kafka", "postgres", "migrate", "worker", "prometheus", "grafana"}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    for name in ("migrate", "worker"):
        build = services[name]["build"]
        context = build["context"] if isinstance(build, dict) else build
        assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE


def test_compose_kafka_matches_the_local_broker_version(
    services: dict[str, dict[str, Any]],
) -> None:
    match = re.search(
        r"^KAFKA_VERSION=\$\{KAFKA_VERSION:-([0-9][0-9.]*)\}",
        SERVICES_SCRIPT.read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    assert match, "scripts/services.sh should pin KAFKA_VERSION=${KAFKA_VERSION:-x.y.z}"
    assert services["kafka"]["image"] == f"apache/kafka:{match.group(1)}"


def test_compose_images_match_the_test_containers(services: dict[str, dict[str, Any]]) -> None:
    # The images the test fixtures start with testcontainers where a Docker engine answers.
    assert services["kafka"]["image"] == KAFKA_IMAGE
    assert services["postgres"]["image"] == POSTGRES_IMAGE


def test_compose_kafka_is_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"].split(",")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    for name, value in env.items():
        if name.endswith("_REPLICATION_FACTOR") or name.endswith("_MIN_ISR"):
            assert value == "1", f"{name} must be 1 on a single node"
    assert "kafka:9092" in _healthcheck_command(services["kafka"])
    assert "/opt/kafka/bin/" in _healthcheck_command(services["kafka"])


def test_compose_postgres_keeps_its_data_in_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    postgres = services["postgres"]
    env = _environment(postgres)
    assert env["POSTGRES_DB"] == "signals"
    assert env["POSTGRES_USER"] == "postgres"
    assert env["POSTGRES_PASSWORD"], "a default password, overridable from the environment"
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pgdata" in compose["volumes"]
    assert "pg_isready" in _healthcheck_command(postgres)


def test_compose_worker_gets_every_contract_setting(worker_env: dict[str, str]) -> None:
    missing = [name for name in CONTRACT_VARIABLES if name not in worker_env]
    assert not missing, f"docker-compose.yml worker environment lacks {missing}"
    assert worker_env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "@postgres:5432/signals" in worker_env["DATABASE_URL"]


def test_compose_worker_environment_is_valid_settings(worker_env: dict[str, str]) -> None:
    fields = set(Settings.model_fields)
    unknown = [name for name in worker_env if name.lower() not in fields]
    assert not unknown, f"not settings of the worker (a typo?): {unknown}"
    settings = Settings.model_validate({name.lower(): value for name, value in worker_env.items()})
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.kafka_security_protocol == "PLAINTEXT"


def test_compose_starts_the_worker_after_its_dependencies(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    migrate = services["migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"
    assert migrate["command"] in ("migrate", ["migrate"])
    assert _environment(migrate)["DATABASE_URL"] == _environment(services["worker"])["DATABASE_URL"]


def test_compose_worker_runs_healthy_and_drains_on_stop(
    services: dict[str, dict[str, Any]], worker_port: int
) -> None:
    worker_service = services["worker"]
    assert worker_service["command"] in ("run", ["run"])
    assert worker_service["restart"] == "unless-stopped"
    assert _duration_s(worker_service["stop_grace_period"]) >= 15
    assert worker_port in _container_ports(worker_service)
    assert f"http://127.0.0.1:{worker_port}/healthz" in _healthcheck_command(worker_service)


def _published(entry: object) -> tuple[str, str, str]:
    """A short-syntax port (`[[IP:]HOST:]CONTAINER`), interpolated: (ip, host port, container)."""
    parts = _interpolate(str(entry)).split(":")
    container = parts[-1]
    host = parts[-2] if len(parts) >= 2 else ""
    ip = ":".join(parts[:-2]) if len(parts) >= 3 else ""
    return ip, host, container


def test_compose_worker_scales_without_collisions(services: dict[str, dict[str, Any]]) -> None:
    """`docker compose up --scale worker=3`: nothing in the worker is one-per-host."""
    worker_service = services["worker"]
    assert "container_name" not in worker_service
    assert "hostname" not in worker_service
    for entry in worker_service.get("ports", []):
        ip, host, _ = _published(entry)
        assert host == "", f"{entry}: a fixed host port collides at the second replica"
        assert ip == "127.0.0.1", entry
    for volume in worker_service.get("volumes", []):
        assert str(volume).endswith(":ro"), f"{volume}: replicas must not share writable state"


def test_compose_publishes_ports_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for entry in service.get("ports", []):
            ip, _, _ = _published(entry)
            assert ip == "127.0.0.1", f"{name} publishes {entry} on every interface"


def test_compose_kafka_keeps_its_data_in_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    kafka = services["kafka"]
    log_dirs = _environment(kafka)["KAFKA_LOG_DIRS"]
    assert f"kafka-data:{log_dirs}" in kafka["volumes"]
    assert "kafka-data" in compose["volumes"]
    # The apache/kafka image owns this folder (its user writes there); a named volume
    # mounted on it starts with that ownership.
    assert log_dirs == "/var/lib/kafka/data"


def test_compose_grafana_has_no_default_admin_password(
    services: dict[str, dict[str, Any]],
) -> None:
    raw = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert raw.startswith("${GRAFANA_ADMIN_PASSWORD:?"), raw
    with pytest.raises(KeyError, match="GRAFANA_ADMIN_PASSWORD is required"):
        _interpolate(raw, env={})
    assert _interpolate(raw, env={"GRAFANA_ADMIN_PASSWORD": "x1"}) == "x1"


def test_compose_env_script_writes_random_passwords_once(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=DEBUG\n", encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if k not in SHELL_ENV}

    def run() -> None:
        subprocess.run(
            [str(ROOT / "scripts" / "compose-env.sh"), str(env_file)],
            env=clean,
            check=True,
            capture_output=True,
            timeout=30,
        )

    run()
    first = env_file.read_text(encoding="utf-8")
    run()
    assert env_file.read_text(encoding="utf-8") == first, "an existing password is kept"
    lines = first.splitlines()
    assert lines[0] == "LOG_LEVEL=DEBUG"
    for name in ("GRAFANA_ADMIN_PASSWORD", "GRAFANA_DB_PASSWORD"):
        (password,) = [line.split("=", 1)[1] for line in lines if line.startswith(name + "=")]
        assert re.fullmatch(r"[A-Za-z0-9]{24}", password), (name, password)
    assert env_file.stat().st_mode & 0o077 == 0, ".env holds secrets: owner only"


def test_compose_file_matches_the_compose_specification(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The file as written and as interpolated, against the Compose specification's JSON Schema
    (check-jsonschema's vendored copy: no network, no Docker)."""
    interpolated = tmp_path / "interpolated.json"
    interpolated.write_text(json.dumps(_interpolate_tree(compose)), encoding="utf-8")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("check-jsonschema")),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
            str(interpolated),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _interpolate_tree(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _interpolate_tree(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(item) for item in node]
    if isinstance(node, str):
        return _interpolate(node)
    return node


def test_compose_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"


# ---------------------------------------------------------------------------- Prometheus


def test_prometheus_config_is_valid(prometheus: dict[str, Any]) -> None:
    assert set(prometheus) <= {"global", "scrape_configs", "rule_files", "alerting"}
    defaults = _mapping(prometheus["global"], "global")
    jobs = prometheus["scrape_configs"]
    names = [job["job_name"] for job in jobs]
    assert len(names) == len(set(names)), "job names must be unique"
    for job in jobs:
        interval = _duration_s(job.get("scrape_interval", defaults.get("scrape_interval", "1m")))
        timeout = _duration_s(job.get("scrape_timeout", defaults.get("scrape_timeout", "10s")))
        assert timeout <= interval, f"{job['job_name']}: scrape_timeout exceeds scrape_interval"
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                assert re.fullmatch(r"[a-z0-9.-]+:\d+", target), target
        for group in job.get("dns_sd_configs", []):
            assert group["type"] == "A"
            assert all(re.fullmatch(r"[a-z0-9.-]+", name) for name in group["names"])


def test_prometheus_scrapes_every_worker_replica_every_5s(
    prometheus: dict[str, Any], worker_port: int
) -> None:
    """DNS service discovery of the compose service name finds each `--scale` replica."""
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "signal-worker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert _duration_s(job["scrape_interval"]) == 5
    assert "static_configs" not in job, "a static target is one replica, not all"
    (dns,) = job["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert dns["type"] == "A"
    assert dns["port"] == worker_port
    assert _duration_s(dns["refresh_interval"]) <= 30, "new replicas are found within 30 s"


def test_compose_mounts_the_prometheus_config(services: dict[str, dict[str, Any]]) -> None:
    assert (
        "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in services["prometheus"]["volumes"]
    )


# ---------------------------------------------------------------------------- Grafana


def _grafana_mount(services: dict[str, dict[str, Any]], source: str) -> str:
    for volume in services["grafana"]["volumes"]:
        parts = str(volume).split(":")
        if parts[0] == source:
            return parts[1]
    pytest.fail(f"grafana does not mount {source}")


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside collapsed rows


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [str(target["expr"]) for target in panel.get("targets", [])]


def _find_graph(dashboard: dict[str, Any], title_word: str, expr_part: str) -> dict[str, Any]:
    """The time-series panel whose title has `title_word` and a query has `expr_part`."""
    for panel in _panels(dashboard):
        if (
            panel["type"] == "timeseries"
            and title_word.lower() in panel["title"].lower()
            and any(expr_part in expr for expr in _exprs(panel))
        ):
            return panel
    pytest.fail(f"no time series titled with {title_word!r} querying {expr_part!r}")


def test_grafana_datasource_is_the_compose_prometheus(
    datasource: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert 9090 in _container_ports(services["prometheus"])
    assert _grafana_mount(services, "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"


def test_grafana_provider_loads_the_mounted_dashboards(
    services: dict[str, dict[str, Any]],
) -> None:
    config = _load_yaml(GRAFANA_PROVISIONING / "dashboards" / "signal-worker.yml")
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    mounted = _grafana_mount(services, "./deploy/grafana/dashboards")
    assert provider["options"]["path"] == mounted
    home = _environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounted}/{DASHBOARD.name}"


def test_grafana_allows_anonymous_viewers(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["grafana"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "signal-worker"
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"


def test_dashboard_queries_the_provisioned_datasource(
    dashboard: dict[str, Any], datasource: dict[str, Any]
) -> None:
    # Through its `datasource` variable, which starts at the default Prometheus: the
    # provisioned one (tests/unit/test_dashboards.py: no uid is hard-coded).
    assert datasource["isDefault"] is True
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", datasource["type"])
    assert variable["current"] == {}, "picked at load: the default datasource of its type"
    expected = {"type": "prometheus", "uid": "${" + variable["name"] + "}"}
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, panel["title"]


def test_dashboard_uses_only_metrics_the_worker_exposes(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for panel in _panels(dashboard):
        for expr in _exprs(panel):
            for name in _METRIC_RE.findall(expr):
                base = name
                for suffix in HISTOGRAM_SUFFIXES:
                    if name.endswith(suffix) and name.removesuffix(suffix) in METRICS:
                        base = name.removesuffix(suffix)
                assert base in METRICS, f"{panel['title']}: unknown metric {name}"
                is_histogram = METRICS[base] == "histogram"
                assert is_histogram == (name != base), f"{panel['title']}: {name} is misused"
                used.add(base)
    # Which metrics must be on a panel: tests/unit/test_dashboards.py.
    assert used


def test_dashboard_has_the_operational_panels(dashboard: dict[str, Any]) -> None:
    throughput = _find_graph(dashboard, "throughput", "signal_worker_records_consumed_total")
    assert "sum by (topic) (rate(signal_worker_records_consumed_total[1m]))" in _exprs(throughput)
    executions = _find_graph(dashboard, "executions by status", "signal_worker_executions_total")
    assert any("by (status)" in expr for expr in _exprs(executions))
    latency = _find_graph(dashboard, "latency", "signal_worker_end_to_end_latency_seconds_bucket")
    quantiles = {
        match.group(1)
        for expr in _exprs(latency)
        if (match := re.match(r"histogram_quantile\((0\.\d+),", expr))
    }
    assert quantiles == {"0.5", "0.95", "0.99"}
    lag = _find_graph(dashboard, "lag", "signal_worker_consumer_lag")
    assert any("partition" in expr for expr in _exprs(lag))


# ---------------------------------------------------------------------------- compose CLI


def _compose_command() -> list[str] | None:
    """`docker compose` (plugin) or Debian's `docker-compose` (1.29+), if installed."""
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        probe = subprocess.run(
            ["docker-compose", "version", "--short"], capture_output=True, text=True, check=False
        )
        version = re.match(r"v?(\d+)\.(\d+)", probe.stdout.strip())
        # 1.29 added service_completed_successfully; older ones reject the file.
        if probe.returncode == 0 and version and (int(version[1]), int(version[2])) >= (1, 29):
            return ["docker-compose"]
    return None


def test_compose_cli_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip(
            "neither `docker compose` (the CLI plugin) nor docker-compose >= 1.29 is installed; "
            "`docker compose config -q` parses the file without an engine where either exists"
        )
    result = subprocess.run(
        [*command, "--file", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **SHELL_ENV},  # what `make up` puts in .env
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------- engine script


def _engine_script(
    env_overrides: dict[str, str], path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONTAINER_ENGINE"}
    env.update(env_overrides)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(ENGINE_SCRIPT), "engine"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _bare_path(folder: Path) -> str:
    """A PATH with only what the script needs before it looks for an engine: no docker,
    no podman, no apt-get, as on a machine where neither engine can be had."""
    folder.mkdir()
    for tool in ("dirname", "mkdir", "id"):
        found = shutil.which(tool)
        assert found, tool
        (folder / tool).symlink_to(found)
    return str(folder)


def test_engine_script_fails_in_one_line_naming_why(tmp_path: Path) -> None:
    cache = {"SIGNAL_WORKER_CACHE": str(tmp_path / "cache")}
    cases = [
        (_engine_script({**cache, "CONTAINER_ENGINE": "lxc"}), "must be docker or podman"),
        (
            _engine_script(cache, path=_bare_path(tmp_path / "bin")),
            "no Docker engine answers and podman is not installed",
        ),
    ]
    docker_absent = subprocess.run(
        ["sh", "-c", "docker info >/dev/null 2>&1"], check=False, timeout=15
    ).returncode
    if docker_absent:
        cases.append(
            (_engine_script({**cache, "CONTAINER_ENGINE": "docker"}), "no Docker engine answers")
        )
    for result, reason in cases:
        assert result.returncode == 1, result
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("[containers] error: ") and reason in line, line
