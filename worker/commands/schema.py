"""`signal-worker schema [--out DIR]`: the JSON Schemas of the message models, for publishers.

The files are generated from `worker.messages` (validation mode: what the worker accepts),
with sorted keys and a trailing newline so that a regeneration diffs cleanly. The committed
copies in `docs/schemas/` are what `docs/asyncapi.yaml` refers to; a unit test fails when
they no longer match the models.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from worker.errors import UsageError
from worker.messages import COMMAND_ADAPTER, EVENT_ADAPTER, PriceTickV1, SignalV1
from worker.settings import Settings

DEFAULT_OUT = Path("docs/schemas")
SCHEMAS: dict[str, type[BaseModel] | TypeAdapter[Any]] = {
    "signal.v1.json": SignalV1,
    "price-tick.v1.json": PriceTickV1,
    # One schema per command, told apart by `command` (a discriminated union, `oneOf`).
    "command.v1.json": COMMAND_ADAPTER,
    # What the worker publishes on EVENTS_TOPIC, told apart by `type`.
    "event.v1.json": EVENT_ADAPTER,
}


def render(model: type[BaseModel] | TypeAdapter[Any]) -> str:
    """The JSON Schema of `model` as stable text: sorted keys, two-space indent, final newline."""
    if isinstance(model, TypeAdapter):
        schema = model.json_schema(mode="validation")
        schema["title"] = "EventV1" if model is EVENT_ADAPTER else "CommandV1"
    else:
        schema = model.model_json_schema(mode="validation")
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(out: Path) -> list[Path]:
    """Write every schema file into `out` (created if missing); return the paths written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder: {exc.strerror}") from exc
    written = []
    for name, model in SCHEMAS.items():
        path = out / name
        try:
            path.write_text(render(model), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--out {out}: cannot write {name}: {exc.strerror}") from exc
        written.append(path)
    return written


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Write the files and print their paths."""
    del settings
    for path in write_schemas(Path(args.out) if args.out else DEFAULT_OUT):
        print(f"wrote {path}")
    return 0
