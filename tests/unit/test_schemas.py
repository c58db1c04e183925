"""The published message schemas and the AsyncAPI document stay in step with the code.

`docs/schemas/*.json` must be exactly what `signal-worker schema` generates from the models
(regenerate with `.venv/bin/signal-worker schema` when a model changes); `docs/asyncapi.yaml`
must parse, name the contract's topics and refer to those files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.cli import run_cli
from worker.commands.schema import SCHEMAS, render, write_schemas
from worker.messages import COMMAND_NAMES, PriceTickV1, SignalV1
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCHEMA_DIR = DOCS / "schemas"
ASYNCAPI = DOCS / "asyncapi.yaml"
# Contract section 2: the topics' default names.
CONTRACT_TOPICS = {
    "trading-signals",
    "token-prices",
    "trading-signals.dlq",
    "trading-signals.commands",
    "trading-signals.events",
}
DLQ_HEADERS = {"error", "original-topic", "original-partition", "original-offset"}
# Keywords of JSON Schema 2019-09/2020-12 that AsyncAPI's schema (a draft-07 superset) lacks.
NEWER_KEYWORDS = {
    "$defs",
    "prefixItems",
    "dependentSchemas",
    "dependentRequired",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "$anchor",
}


def _keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    document = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


# --- the JSON Schemas ---------------------------------------------------------------------


def test_committed_schema_files_are_what_the_models_generate(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(SCHEMAS)
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(SCHEMAS), (
        "docs/schemas holds files the models do not generate"
    )
    for path in written:
        committed = (SCHEMA_DIR / path.name).read_text(encoding="utf-8")
        assert committed == path.read_text(encoding="utf-8"), (
            f"docs/schemas/{path.name} is out of date: run `signal-worker schema`"
        )


async def test_the_schema_command_writes_the_same_files(tmp_path: Path) -> None:
    done = await run_cli(None, "schema", "--out", str(tmp_path / "out"), timeout_s=60)
    assert done.code == 0, done.stderr
    for name, model in SCHEMAS.items():
        assert (tmp_path / "out" / name).read_text(encoding="utf-8") == render(model)
        assert f"wrote {tmp_path / 'out' / name}" in done.stdout


def test_rendering_is_stable_sorted_and_ends_with_a_newline() -> None:
    for model in SCHEMAS.values():
        text = render(model)
        assert text == render(model)
        assert text.endswith("}\n")
        assert not text.endswith("\n\n")
        assert json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n" == text


@pytest.mark.parametrize(
    ("name", "model", "required"),
    [
        (
            "signal.v1.json",
            SignalV1,
            ["user_id", "token_address", "signal_type", "signal_strength"],
        ),
        ("price-tick.v1.json", PriceTickV1, ["token_address", "price_usd"]),
    ],
)
def test_schemas_require_the_contracts_fields_and_use_draft_07_keywords_only(
    name: str, model: type[Any], required: list[str]
) -> None:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    assert schema["title"] == model.__name__
    assert schema["type"] == "object"
    assert sorted(schema["required"]) == sorted(required)
    assert set(model.model_fields) == set(schema["properties"])
    assert not NEWER_KEYWORDS & set(_keys(schema))


# --- the AsyncAPI document ----------------------------------------------------------------


def test_asyncapi_is_version_3_with_the_contract_topics(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["title"] and asyncapi["info"]["version"]
    addresses = {channel["address"] for channel in asyncapi["channels"].values()}
    assert addresses == CONTRACT_TOPICS
    settings = Settings()
    kafka = settings.kafka
    assert set(kafka.input_topics) | {kafka.dlq_topic, settings.events_topic_name} == (
        CONTRACT_TOPICS
    )


def test_asyncapi_payloads_refer_to_the_schema_files(asyncapi: dict[str, Any]) -> None:
    messages = asyncapi["components"]["messages"]
    assert messages["signal"]["payload"] == {"$ref": "./schemas/signal.v1.json"}
    assert messages["priceTick"]["payload"] == {"$ref": "./schemas/price-tick.v1.json"}
    files = {ref for ref in _refs(asyncapi) if not ref.startswith("#")}
    assert files == {f"./schemas/{name}" for name in SCHEMAS}
    for ref in files:
        assert (DOCS / ref).resolve().is_file(), ref


def test_every_local_reference_resolves(asyncapi: dict[str, Any]) -> None:
    local = [ref for ref in _refs(asyncapi) if ref.startswith("#/")]
    assert local
    for ref in local:
        node: Any = asyncapi
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]


def test_asyncapi_keys_and_dead_letter_headers(asyncapi: dict[str, Any]) -> None:
    messages = asyncapi["components"]["messages"]
    assert "user_id" in messages["signal"]["bindings"]["kafka"]["key"]["description"]
    assert "token address" in messages["priceTick"]["bindings"]["kafka"]["key"]["description"]
    headers = messages["deadLetter"]["headers"]
    assert set(headers["required"]) == DLQ_HEADERS
    assert set(headers["properties"]) == DLQ_HEADERS


def test_asyncapi_operations_receive_signals_and_prices_and_send_dead_letters(
    asyncapi: dict[str, Any],
) -> None:
    channels = asyncapi["channels"]
    seen = set()
    for operation in asyncapi["operations"].values():
        channel = channels[operation["channel"]["$ref"].rsplit("/", 1)[1]]
        seen.add((operation["action"], channel["address"]))
    assert seen == {
        ("receive", "trading-signals"),
        ("receive", "token-prices"),
        ("receive", "trading-signals.commands"),
        ("send", "trading-signals.dlq"),
        ("send", "trading-signals.events"),
    }


def test_the_command_schema_has_one_branch_per_command_each_with_its_required_fields() -> None:
    schema = json.loads((SCHEMA_DIR / "command.v1.json").read_text(encoding="utf-8"))
    assert schema["title"] == "CommandV1"
    assert not NEWER_KEYWORDS & set(_keys(schema)) - {"$defs"}
    branches = schema["$defs"]
    kinds = {b["properties"]["command"]["const"]: b for b in branches.values()}
    assert sorted(kinds) == sorted(COMMAND_NAMES)
    assert "user_id" in kinds["create_user"]["required"]
    assert set(kinds["withdraw"]["required"]) == {"command", "user_id", "agent_id", "amount"}


def test_asyncapi_examples_are_valid_messages(asyncapi: dict[str, Any]) -> None:
    messages = asyncapi["components"]["messages"]
    for example in messages["signal"]["examples"]:
        SignalV1.model_validate(example["payload"])
    for example in messages["priceTick"]["examples"]:
        PriceTickV1.model_validate(example["payload"])
