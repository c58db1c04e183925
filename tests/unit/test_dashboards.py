"""The Grafana dashboards (deploy/grafana/dashboards/*.json): importable anywhere, and
showing every metric an operator acts on.

A dashboard imports into any Grafana unchanged when it names no datasource by uid: each
picks its datasource through a templated variable of type `datasource` (which starts at
the default datasource of its plugin type), and every panel and query refers to that
variable. The structure checked is what Grafana needs to load a dashboard: panels with
unique integer ids, a type, a title and a gridPos inside the 24-column grid (no two
overlapping), a datasource reference to the variable, and targets with a refId and a
query (`expr` for Prometheus, `rawSql` for PostgreSQL).

The metrics are read from the worker's own registry (worker/metrics.py), not from a list
kept here, so a metric added there without a panel fails the coverage test unless it is
added to NOT_ON_A_PANEL with its reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROVISIONED_DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
GRID_COLUMNS = 24
# The query field of each datasource plugin type the dashboards use.
QUERY_FIELD = {"prometheus": "expr", "grafana-postgresql-datasource": "rawSql"}
# Grafana's own built-in annotation source: not a datasource of the user's.
BUILT_IN = {"type": "grafana", "uid": "-- Grafana --"}

# Metrics no operator acts on, so on no panel. Keep this short; each needs its reason.
NOT_ON_A_PANEL = {
    # The wait of a read signal for the prices before it in event time: the benchmark's
    # figure (docs/benchmarks.md); what an operator would act on shows as end-to-end
    # latency and lag, and a partition holding the order back fails /readyz.
    "signal_worker_signal_wait_seconds",
    # The records read and waiting their turn in event-time order: an internal buffer,
    # bounded by the worker itself; a stuck order shows as lag and in /readyz.
    "signal_worker_order_buffered_records",
}


def dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in DASHBOARDS]


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def datasource_variables(board: dict[str, Any]) -> dict[str, str]:
    """The dashboard's datasource variables: name -> plugin type."""
    return {
        v["name"]: v["query"]
        for v in board.get("templating", {}).get("list", [])
        if v.get("type") == "datasource"
    }


def datasource_refs(node: Any) -> Iterator[Any]:
    """Every value of a `datasource` key, anywhere in the JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def exprs() -> list[str]:
    """The PromQL of every target of every dashboard."""
    return [
        target["expr"]
        for _, board in dashboards()
        for panel in all_panels(board)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def exported_metrics() -> dict[str, set[str]]:
    """The worker's metrics: family name -> the sample names Prometheus stores for it."""
    families: dict[str, set[str]] = {}
    for family in Metrics().registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(family.type, ("",))
        families[family.name] = {family.name + suffix for suffix in suffixes}
    return families


def test_there_are_dashboards() -> None:
    assert {p.name for p in DASHBOARDS} >= {"signal-worker.json", "trading.json"}


@pytest.mark.parametrize(("name", "board"), dashboards(), ids=[p.name for p in DASHBOARDS])
def test_dashboard_has_the_structure_grafana_loads(name: str, board: dict[str, Any]) -> None:
    assert isinstance(board.get("title"), str) and board["title"], name
    assert isinstance(board.get("uid"), str) and re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", board["uid"])
    assert isinstance(board.get("schemaVersion"), int)
    panels = list(all_panels(board))
    assert panels, f"{name}: no panels"
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids), f"{name}: panel ids {ids}"
    assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids {ids}"
    boxes = []
    for panel in panels:
        where = f"{name} panel {panel['id']} ({panel.get('title')})"
        assert isinstance(panel.get("type"), str) and panel["type"], where
        assert isinstance(panel.get("title"), str) and panel["title"], where
        grid = panel.get("gridPos")
        assert isinstance(grid, dict), f"{where}: no gridPos"
        assert all(isinstance(grid.get(k), int) for k in "xywh"), f"{where}: gridPos {grid}"
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, where
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, f"{where}: wider than the grid"
        boxes.append((panel["id"], grid))
    for i, (a_id, a) in enumerate(boxes):
        for b_id, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{name}: panels {a_id} and {b_id} overlap"


@pytest.mark.parametrize(("name", "board"), dashboards(), ids=[p.name for p in DASHBOARDS])
def test_every_query_uses_a_datasource_variable(name: str, board: dict[str, Any]) -> None:
    variables = datasource_variables(board)
    assert variables, f"{name}: no datasource variable in templating.list"
    for variable, plugin in variables.items():
        assert plugin in QUERY_FIELD, f"{name}: variable {variable} of unknown type {plugin}"
    for panel in all_panels(board):
        if panel["type"] == "row":
            continue
        where = f"{name} panel {panel['id']} ({panel['title']})"
        ref = panel.get("datasource")
        assert isinstance(ref, dict), f"{where}: no datasource"
        used = re.fullmatch(r"\$\{(\w+)\}", str(ref.get("uid")))
        assert used and used[1] in variables, f"{where}: datasource {ref}"
        plugin = variables[used[1]]
        assert ref.get("type") == plugin, f"{where}: datasource type {ref.get('type')}"
        targets = panel.get("targets")
        assert isinstance(targets, list) and targets, f"{where}: no targets"
        ref_ids = [t.get("refId") for t in targets]
        assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), f"{where}: refIds {ref_ids}"
        for target in targets:
            query = target.get(QUERY_FIELD[plugin])
            assert isinstance(query, str) and query.strip(), f"{where}: target {target}"
            assert target.get("datasource", ref) == ref, f"{where}: target's own datasource"


@pytest.mark.parametrize(("name", "board"), dashboards(), ids=[p.name for p in DASHBOARDS])
def test_no_datasource_uid_is_hard_coded(name: str, board: dict[str, Any]) -> None:
    # Every datasource reference anywhere (panels, targets, annotations, variables) is a
    # variable or Grafana's built-in; no uid of the provisioned datasources appears at all.
    for ref in datasource_refs(board):
        if ref == BUILT_IN:
            continue
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        assert isinstance(uid, str) and re.fullmatch(r"\$\{\w+\}", uid), f"{name}: {ref}"
    text = json.dumps(board)
    provisioned = re.findall(
        r"^\s*uid:\s*(\S+)",
        "\n".join(p.read_text(encoding="utf-8") for p in PROVISIONED_DATASOURCES.glob("*.yml")),
        flags=re.MULTILINE,
    )
    assert provisioned, "the provisioned datasources have uids"
    for uid in provisioned:
        assert f'"uid": "{uid}"' not in text, f"{name}: hard-codes the datasource uid {uid}"


def test_dashboards_name_only_metrics_the_worker_exports() -> None:
    known = set().union(*exported_metrics().values())
    named = {m for expr in exprs() for m in re.findall(r"\bsignal_worker_\w+", expr)}
    assert named, "no worker metric on any dashboard"
    assert named <= known, sorted(named - known)


def test_every_metric_an_operator_acts_on_is_on_a_panel() -> None:
    families = exported_metrics()
    assert set(families) >= NOT_ON_A_PANEL, sorted(NOT_ON_A_PANEL - set(families))
    named = {m for expr in exprs() for m in re.findall(r"\bsignal_worker_\w+", expr)}
    missing = sorted(
        family
        for family, samples in families.items()
        if family not in NOT_ON_A_PANEL and not samples & named
    )
    assert not missing, f"on no panel (add one, or to NOT_ON_A_PANEL with why): {missing}"
    shown = sorted(f for f in NOT_ON_A_PANEL if families[f] & named)
    assert not shown, f"on a panel yet listed in NOT_ON_A_PANEL: {shown}"
