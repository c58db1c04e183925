"""One JSON reader for everything the worker decodes: Kafka messages and stored configs.

The same rules wherever JSON comes in, so a value means one thing in a message, a stored
`trading_config` and a `replay --config` file:

- numbers exact: fractions as `Decimal`, integers as `int` of at most `MAX_INT_DIGITS`
  digits (no `int()` of thousands of digits); NaN and Infinity refused, and so is an
  exponent beyond what a `Decimal` holds;
- a key twice in one object refused: JSON readers differ on which value counts (Python's
  takes the last, PostgreSQL's jsonb too), so a ledger takes neither;
- nesting bounded (Python's recursion limit, about a thousand levels).

Every refusal is a `JsonRefusedError` (a `ValueError`) with one sentence; callers put it in
their own words (`InvalidMessage`, `InvalidConfig`).
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

MAX_INT_DIGITS = 40
_SHOWN_CHARS = 40


class JsonRefusedError(ValueError):
    """Text that is not JSON, or JSON this worker does not accept; the reason is its text."""


class _UnacceptedError(ValueError):
    """Raised inside the parse, turned into `JsonRefusedError` by `loads_exact`."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of `pairs`, refused when a key repeats (about 2 us per object)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _UnacceptedError(f"the key {_shown(key)} appears twice in one object")
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> NoReturn:
    raise _UnacceptedError(f"{name} is not a number this worker accepts")


def _parse_int(digits: str) -> int:
    count = len(digits.lstrip("-"))
    if count > MAX_INT_DIGITS:
        raise _UnacceptedError(
            f"a number with {count} digits is too long (at most {MAX_INT_DIGITS} digits)"
        )
    return int(digits)


def loads_exact(text: str) -> object:
    """The JSON value of `text` by the rules above; `JsonRefusedError` with the reason."""
    try:
        return json.loads(
            text,
            parse_float=Decimal,
            parse_int=_parse_int,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )
    except _UnacceptedError as exc:
        raise JsonRefusedError(f"not JSON this worker accepts: {exc}") from exc
    except InvalidOperation as exc:  # a number's exponent beyond what a Decimal holds
        raise JsonRefusedError(
            "not JSON this worker accepts: a number's exponent is too large"
        ) from exc
    except RecursionError as exc:
        raise JsonRefusedError("not JSON this worker accepts: nested too deeply") from exc
    except ValueError as exc:  # json's own: one short line ("Expecting value: line 1 ...")
        raise JsonRefusedError(f"not JSON: {exc}") from exc


def dumps_exact(value: object) -> str:
    """JSON text of a value `loads_exact` gives (dicts, lists, str, int, `Decimal`, bool,
    None), numbers written exactly as their `Decimal` holds them (never through float), so
    `loads_exact(dumps_exact(v)) == v`. `TypeError` for anything else (`ValueError` for a
    NaN or an infinity)."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: object, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"a JSON object key must be text, not {type(key).__name__}")
            out.append(("," if i else "") + json.dumps(key, ensure_ascii=False) + ":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("JSON holds no NaN or Infinity")
        out.append(str(value))
    elif value is None or isinstance(value, str | bool | int):
        out.append(json.dumps(value, ensure_ascii=False))
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


def merge_patch(target: object, patch: object) -> object:
    """`patch` applied to `target` as JSON Merge Patch says (RFC 7396): an object patch
    merges key by key, a null removes the key, anything else replaces the target whole.
    Neither argument is changed."""
    if not isinstance(patch, dict):
        return patch
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, item in patch.items():
        if item is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), item)
    return result
