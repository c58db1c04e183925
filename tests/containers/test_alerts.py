"""The alerting rules run by promtool, and rendered by the chart.

`promtool check rules` on deploy/prometheus/alerts.yml, `promtool check config` on the
compose Prometheus's config (which loads them), `promtool test rules` on
deploy/prometheus/alerts.test.yml (every alert fires on its case and stays silent on the
others), and a copy of the rules with one threshold moved, which those tests must catch.
promtool comes from `scripts/promtool.sh` (built once with `go install`, cached; its progress
lines go straight to the terminal, so a cold first build does not look hung). Skipped only
where go is missing and promtool was never built.

The chart: `helm template` renders no PrometheusRule by default, and with
`prometheusRule.enabled` one whose spec is the rules file.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.containers.conftest import ROOT, SETUP_TIMEOUT_S
from tests.containers.test_helm import CHART, VALUES, helm_template, one, render

pytestmark = [pytest.mark.containers, pytest.mark.timeout(SETUP_TIMEOUT_S + 120)]

SCRIPT = ROOT / "scripts" / "promtool.sh"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# The Prometheus Operator's PrometheusRule CRD (monitoring.coreos.com_prometheusrules), for
# the fields the chart writes; no other field.
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"labels": _STRINGS}},
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string", "minLength": 1},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                        "labels": _STRINGS,
                                        "annotations": _STRINGS,
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def promtool(request: pytest.FixtureRequest) -> str:
    """The path of promtool, from `scripts/promtool.sh path` (built once, cached)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    last = ""
    with (
        capture.global_and_fixture_disabled() if capture else contextlib.nullcontext(),
        subprocess.Popen(
            [str(SCRIPT), "path"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        ) as proc,
    ):
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            last = line.strip() or last
        out = proc.stdout.read()
        code = proc.wait(timeout=SETUP_TIMEOUT_S)
    if code != 0:
        if shutil.which("go") is None:
            pytest.skip(f"go is not installed, so promtool cannot be built: {last}")
        pytest.fail(last or f"{SCRIPT.name} path exited {code}", pytrace=False)
    return out.strip().splitlines()[-1]


def rule_names() -> list[str]:
    spec = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule["alert"] for group in spec["groups"] for rule in group["rules"]]


def run(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_names())} rules found" in result.stdout + result.stderr


def test_promtool_accepts_the_compose_prometheus_config_with_its_rules(promtool: str) -> None:
    # What `make up`'s Prometheus loads: the scrape config and, through rule_files, the rules.
    result = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output
    assert "is valid prometheus config file syntax" in output
    # Then the rule file it names, checked in turn.
    assert output.rstrip().endswith(f"SUCCESS: {len(rule_names())} rules found"), output


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


BROKEN = {
    "threshold-moved": ("held_price_age_seconds) > 900", "held_price_age_seconds) > 9000"),
    "condition-inverted": ("(signal_worker_ready) == 0", "(signal_worker_ready) == 1"),
}


@pytest.mark.parametrize(("old", "new"), BROKEN.values(), ids=BROKEN.keys())
def test_the_unit_tests_catch_a_broken_rule(
    promtool: str, tmp_path: Path, old: str, new: str
) -> None:
    text = RULES.read_text(encoding="utf-8")
    assert old in text
    (tmp_path / "alerts.yml").write_text(text.replace(old, new), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / "alerts.test.yml")
    result = run(promtool, "test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "FAILED" in result.stdout + result.stderr


def test_the_chart_renders_the_rules_as_a_prometheus_rule_only_when_asked(helm: str) -> None:
    for values in VALUES.values():
        objects = render(helm, "--values", str(values))
        assert not [o for o in objects if o["kind"] == "PrometheusRule"], values.name
    objects = render(
        helm,
        "--values",
        str(VALUES["default"]),
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.labels.release=prometheus",
    )
    rule = one(objects, "PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE)
    assert rule["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "signal-worker"


def test_the_chart_refuses_an_unknown_prometheus_rule_value(helm: str) -> None:
    result = helm_template(
        helm, "--values", str(VALUES["default"]), "--set", "prometheusRule.enable=true"
    )
    assert result.returncode != 0
    assert "prometheusRule" in result.stderr, result.stderr


def test_helm_lint_strict_passes_with_the_prometheus_rule(helm: str) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--values", str(VALUES["default"]),
         "--set", "prometheusRule.enabled=true"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
