"""The alerting rules (deploy/prometheus/alerts.yml): one copy, loaded by the compose
Prometheus, built on metrics the worker exports, each with its runbook line in the README and
a promtool case that fires it and one where it stays silent.

promtool itself runs them in tests/containers/test_alerts.py (`promtool test rules`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
CHART_RULES = ROOT / "deploy" / "helm" / "signal-worker" / "files" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
PROMTOOL_SCRIPT = ROOT / "scripts" / "promtool.sh"
RUNBOOK = "README.md, Operations > Alerts: {}"
_METRIC_RE = re.compile(r"\bsignal_worker_\w+")
# What issue 25 says an operator must hear about, by the metric that tells it.
MUST_ALERT_ON = {
    "signal_worker_consumer_lag": "consumer lag growing",
    "signal_worker_dead_letters_total": "dead letters per minute",
    "signal_worker_retries_total": "retries",
    "signal_worker_retrying": "a stalled batch",
    "signal_worker_assigned_partitions": "partitions unassigned",
    "signal_worker_ready": "worker not ready",
    "signal_worker_held_price_age_seconds": "prices stale for held tokens",
    "signal_worker_snapshot_failures_total": "snapshot failures",
    "signal_worker_partitions_blocked": "partitions refused by the offset checks",
    "signal_worker_events_oldest_unpublished_seconds": "the events relay falling behind",
    "signal_worker_events_published_total": "the events relay stalled",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def readme_alert_rows() -> dict[str, list[str]]:
    """The README's "Alerts" table: alert name -> its other cells."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("**Alerts.**") :]
    section = section[: section.index("\n## ")]
    rows = {}
    for line in section.splitlines():
        if m := re.match(r"^\| `(\w+)` \|(.*)\|$", line):
            rows[m[1]] = [cell.strip() for cell in m[2].split("|")]
    return rows


def exported_samples() -> set[str]:
    """The sample names the worker's registry exports (a counter's with `_total`)."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def test_the_rules_are_one_file_the_chart_and_compose_share() -> None:
    assert RULES.is_symlink(), "deploy/prometheus/alerts.yml links to the chart's copy"
    assert RULES.resolve() == CHART_RULES.resolve()
    assert CHART_RULES.is_file() and not CHART_RULES.is_symlink()


def test_the_compose_prometheus_loads_the_rules() -> None:
    assert "alerts.yml" in load(PROMETHEUS_CONFIG)["rule_files"]
    volumes = load(COMPOSE)["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes


def test_every_alert_has_a_severity_a_summary_and_its_runbook_line() -> None:
    rows = readme_alert_rows()
    assert set(rows) == set(alerts()), "one README line per alert, no other"
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook"] == RUNBOOK.format(name), name
        meaning, action = rows[name]
        assert meaning and action, f"{name}: what it means and what to do"


def test_the_rules_use_only_metrics_the_worker_exports() -> None:
    named = {m for rule in rules() for m in _METRIC_RE.findall(rule["expr"])}
    assert named, "no worker metric in any rule"
    assert named <= exported_samples(), sorted(named - exported_samples())


def test_what_an_operator_must_hear_about_has_an_alert() -> None:
    named = {m for rule in rules() for m in _METRIC_RE.findall(rule["expr"])}
    missing = {metric: why for metric, why in MUST_ALERT_ON.items() if metric not in named}
    assert not missing, missing


def test_every_alert_has_a_promtool_case_that_fires_it_and_one_that_does_not() -> None:
    spec = load(RULE_TESTS)
    assert spec["rule_files"] == ["alerts.yml"]
    fired: set[str] = set()
    silent: set[str] = set()
    for group in spec["tests"]:
        for case in group["alert_rule_test"]:
            (fired if case["exp_alerts"] else silent).add(case["alertname"])
    assert fired == set(alerts()), sorted(set(alerts()) ^ fired)
    assert silent == set(alerts()), sorted(set(alerts()) ^ silent)


def test_the_promtool_script_fails_in_one_line_where_go_is_missing(tmp_path: Path) -> None:
    # An empty cache and a PATH without go: what a machine without go sees on a first run.
    folder = tmp_path / "bin"
    folder.mkdir()
    mkdir = shutil.which("mkdir")
    assert mkdir
    (folder / "mkdir").symlink_to(mkdir)
    env = {"PATH": str(folder), "HOME": str(tmp_path), "SIGNAL_WORKER_CACHE": str(tmp_path / "c")}
    result = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(PROMTOOL_SCRIPT), "path"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line == (
        "[promtool] error: promtool v0.316.0 is built with go install, and go is not installed"
    )
