"""The Helm chart: `helm lint`, `helm template`, and every rendered object against its schema.

Rendered twice: with the least a user sets (ci/default-values.yaml: the database) and with
every option on (ci/full-values.yaml: SASL over TLS, a Secret of the user's, KEDA, the
ServiceMonitor). Every Kubernetes object is validated, offline and strictly (no unknown
field), against the schemas kubernetes-validate ships, for the chart's oldest Kubernetes
(1.25) and the newest it knows. It ships none for the two custom resources, KEDA's
ScaledObject and TriggerAuthentication and the Prometheus Operator's ServiceMonitor: those
are checked against the parts of their CRDs' schemas that the chart writes (below).
"""

from __future__ import annotations

import base64
import subprocess
import tomllib
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.containers.conftest import ROOT, SETUP_TIMEOUT_S
from worker.settings import Settings

pytestmark = [pytest.mark.containers, pytest.mark.timeout(SETUP_TIMEOUT_S + 120)]

CHART = ROOT / "deploy" / "helm" / "signal-worker"
VALUES = {name: CHART / "ci" / f"{name}-values.yaml" for name in ("default", "full")}
RELEASE = "sw"
NAMESPACE = "trading"
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest whose
# schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())
CUSTOM_API_VERSIONS = ("monitoring.coreos.com/v1", "keda.sh/v1alpha1")
DRAIN_BOUND_S = 10  # README "Operations": a SIGTERM drain ends within 10 s
WORKER_UID = 10001

_NAME = {"type": "string", "minLength": 1}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": _NAME}}
_DURATION = {"type": "string", "pattern": r"^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"}
# The CRDs' schemas (keda.sh_scaledobjects, keda.sh_triggerauthentications,
# monitoring.coreos.com_servicemonitors), for the fields the chart writes; no other field.
CUSTOM_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {"name": _NAME, "kind": _NAME, "apiVersion": _NAME},
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": _NAME,
                                # map[string]string in the CRD: a number here is rejected.
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {"name": _NAME, "kind": _NAME},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {"parameter": _NAME, "name": _NAME, "key": _NAME},
                        },
                    }
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector"],
                "additionalProperties": False,
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchLabels": _LABELS},
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchNames": {"type": "array", "items": _NAME}},
                    },
                    "endpoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": _NAME,
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
}


def helm_template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            helm,
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            "1.30.0",
            *(flag for api in CUSTOM_API_VERSIONS for flag in ("--api-versions", api)),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    result = helm_template(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    return {name: render(helm, "--values", str(path)) for name, path in VALUES.items()}


def one(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    """The one object of `kind` (of the given app.kubernetes.io/component, or of none)."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects (component {component})"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(pod_owner: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_owner["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


# ---------------------------------------------------------------------------- lint, schemas


@pytest.mark.parametrize("values", sorted(VALUES))
def test_helm_lint_strict_passes(helm: str, values: str) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--values", str(VALUES[values])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", sorted(VALUES))
def test_every_rendered_object_is_valid(
    rendered: dict[str, list[dict[str, Any]]], values: str
) -> None:
    problems = []
    for obj in rendered[values]:
        key = (obj["apiVersion"], obj["kind"])
        if key in CUSTOM_SCHEMAS:
            try:
                jsonschema.validate(obj, CUSTOM_SCHEMAS[key])
            except jsonschema.ValidationError as exc:
                problems.append(f"{obj['kind']}: {exc.message} at {list(exc.absolute_path)}")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"{obj['kind']} (Kubernetes {version}): {path}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_rendered_objects_are_what_the_values_ask_for(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert kinds(rendered["default"]) == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Secret",
         "Secret", "Service", "ServiceAccount"]
    )  # fmt: skip
    # A Secret of the user's: the chart makes none; KEDA and the ServiceMonitor on.
    assert kinds(rendered["full"]) == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "ScaledObject",
         "Service", "ServiceAccount", "ServiceMonitor", "TriggerAuthentication"]
    )  # fmt: skip


def test_chart_version_follows_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert chart["version"] == version
    assert chart["appVersion"] == version


# ---------------------------------------------------------------------------- the worker


def test_deployment_probes_health_and_readiness(rendered: dict[str, list[dict[str, Any]]]) -> None:
    worker = container(one(rendered["default"], "Deployment"))
    (port,) = worker["ports"]
    assert port == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    startup = worker["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "http"}
    # Start-up may wait STARTUP_TIMEOUT_S (30 s) for each of PostgreSQL and Kafka.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 90
    assert worker["args"] == ["run"]


def test_pods_run_non_root_read_only_without_privileges(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for values in VALUES:
        for owner in (
            one(rendered[values], "Deployment"),
            one(rendered[values], "Job", "migration"),
        ):
            pod = owner["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == WORKER_UID
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert pod["automountServiceAccountToken"] is False
            ctx = container(owner)["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["runAsNonRoot"] is True
            resources = container(owner)["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"])
            assert "memory" in resources["limits"]


def test_deployment_drains_within_its_grace_period_one_pod_at_a_time(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = one(rendered["default"], "Deployment")
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (DRAIN_BOUND_S)
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (0, 1)
    assert deployment["spec"]["replicas"] <= int(
        configmap(rendered["default"])["KAFKA_TOPIC_PARTITIONS"]
    )


def configmap(objects: list[dict[str, Any]], component: str | None = None) -> dict[str, str]:
    """A copy of the data of the ConfigMap (of `component`)."""
    data = one(objects, "ConfigMap", component)["data"]
    assert isinstance(data, dict)
    return dict(data)


def test_settings_come_from_the_configmap_and_secrets_from_the_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["default"]
    data = configmap(objects)
    secret = one(objects, "Secret")
    worker = container(one(objects, "Deployment"))
    assert worker["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-signal-worker"}}]
    (database,) = worker["env"]
    assert database["name"] == "DATABASE_URL"
    assert database["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "DATABASE_URL",
    }
    dsn = base64.b64decode(secret["data"]["DATABASE_URL"]).decode()
    assert dsn == "postgresql://worker:secret@postgres:5432/signals"
    assert not any("secret" in value for value in data.values()), "no secret in the ConfigMap"
    # What the worker reads: every key a setting, and together valid settings.
    assert all(name.lower() in Settings.model_fields for name in data), sorted(data)
    settings = Settings.model_validate(
        {**{k.lower(): v for k, v in data.items()}, "database_url": dsn}
    )
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.kafka_topic_partitions == 12
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/config", "checksum/secret"} <= set(annotations)


def test_sasl_credentials_come_from_the_users_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["full"]
    worker = container(one(objects, "Deployment"))
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker["env"]}
    assert refs == {
        name: {"name": "trading-signal-worker", "key": name}
        for name in ("DATABASE_URL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
    }
    data = configmap(objects)
    assert data["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert data["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["PIPELINE_CONCURRENCY"] == "2"
    assert worker["volumeMounts"] == [
        {"name": "kafka-ca", "mountPath": "/etc/kafka-ca", "readOnly": True}
    ]
    # The CA file exists only in the pod (the mount above); the settings check files.
    assert data.pop("KAFKA_SSL_CAFILE") == "/etc/kafka-ca/ca.crt"
    credentials = {"kafka_sasl_username": "u", "kafka_sasl_password": "p"}
    settings = Settings.model_validate({k.lower(): v for k, v in data.items()} | credentials)
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"


def test_pod_disruption_budget_takes_one_worker_at_a_time(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    pdb = one(rendered["default"], "PodDisruptionBudget")
    deployment = one(rendered["default"], "Deployment")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


# ---------------------------------------------------------------------------- migration


def test_migration_is_a_pre_install_and_pre_upgrade_hook_job(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for values in VALUES:
        objects = rendered[values]
        job = one(objects, "Job", "migration")
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
        migrate = container(job)
        assert migrate["args"] == ["migrate"]
        assert migrate["image"] == container(one(objects, "Deployment"))["image"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        # Hooks run before the release's objects exist: its settings are hooks too, made first.
        hook_config = one(objects, "ConfigMap", "migration")
        assert migrate["envFrom"] == [{"configMapRef": {"name": hook_config["metadata"]["name"]}}]
        assert hook_config["data"] == configmap(objects)
        weight = int(annotations["helm.sh/hook-weight"])
        assert int(hook_config["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
        (database,) = migrate["env"]
        secret_name = database["valueFrom"]["secretKeyRef"]["name"]
        if values == "full":
            assert secret_name == "trading-signal-worker"  # the user's, already there
        else:
            hook_secret = one(objects, "Secret", "migration")
            assert hook_secret["metadata"]["name"] == secret_name
            assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
            assert hook_secret["data"] == one(objects, "Secret")["data"]


# ---------------------------------------------------------------------------- optional parts


def test_service_monitor_scrapes_the_metrics_of_every_pod(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert not [o for o in rendered["default"] if o["kind"] == "ServiceMonitor"]
    monitor = one(rendered["full"], "ServiceMonitor")
    service = one(rendered["full"], "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "http"
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_keda_scales_on_consumer_lag_capped_at_the_partition_count(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert not [o for o in rendered["default"] if o["kind"] == "ScaledObject"]
    objects = rendered["full"]
    scaled = one(objects, "ScaledObject")
    deployment = one(objects, "Deployment")
    data = configmap(objects)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert scaled["spec"]["scaleTargetRef"] == {"name": deployment["metadata"]["name"]}
    # maxReplicas is 50 in the values; the topics have 6 partitions.
    assert scaled["spec"]["maxReplicaCount"] == int(data["KAFKA_TOPIC_PARTITIONS"]) == 6
    assert scaled["spec"]["minReplicaCount"] == 2
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["topic"] for t in triggers} == {
        data["SIGNALS_TOPIC"],
        data["PRICES_TOPIC"],
    }
    auth = one(objects, "TriggerAuthentication")
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["bootstrapServers"] == data["KAFKA_BOOTSTRAP_SERVERS"]
        assert meta["consumerGroup"] == data["CONSUMER_GROUP"]
        assert meta["allowIdleConsumers"] == "false"
        assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert {(r["parameter"], r["key"]) for r in auth["spec"]["secretTargetRef"]} == {
        ("username", "KAFKA_SASL_USERNAME"),
        ("password", "KAFKA_SASL_PASSWORD"),
    }


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "set secrets.databaseUrl (the PostgreSQL DSN) or secrets.existingSecret"),
        (
            ("--set", "secrets.databaseUrl=postgresql://x", "--set", "replicaCount=13"),
            "replicaCount 13 exceeds kafka.partitions 12",
        ),
        (
            ("--set", "secrets.databaseUrl=postgresql://x", "--set", "kafka.sasl.mechanism=PLAIN"),
            "set secrets.kafkaSaslUsername and secrets.kafkaSaslPassword",
        ),
        (
            ("--set", "secrets.existingSecret=s", "--set", "terminationGracePeriodSeconds=5"),
            "terminationGracePeriodSeconds",
        ),
        (
            ("--set", "secrets.existingSecret=s", "--set", "kafka.securityProtocol=TLS"),
            "securityProtocol",
        ),
    ],
    ids=[
        "no-database",
        "replicas-above-partitions",
        "sasl-without-password",
        "short-grace",
        "bad-protocol",
    ],
)
def test_chart_refuses_what_cannot_work_in_one_message(
    helm: str, args: tuple[str, ...], message: str
) -> None:
    result = helm_template(helm, *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
