"""Versioned wire models of the Kafka messages (contract sections 3 and 4) and their decoding.

Numbers are parsed as `Decimal` from their JSON text (never through float), NaN and
Infinity are refused, integers and strings are strict (no `"5x"` or `"5"` into an int, no
number into a string). Unknown fields are ignored, as the contract says.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, NoReturn
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from worker.domain.models import Signal
from worker.errors import InvalidMessage

_BASE58_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")
MAX_MESSAGE_BYTES = 1_048_576

StrictInt = Annotated[int, Field(strict=True)]
# The pattern is checked by `_check_mint` (after trimming); here it documents the schema.
MintAddress = Annotated[str, Field(strict=True, json_schema_extra={"pattern": _BASE58_RE.pattern})]
# Upper bounds keep values inside their columns: numeric(30,18) prices, numeric(30,8) metrics.
PriceUsd = Annotated[Decimal, Field(gt=0, lt=Decimal("1e12"), allow_inf_nan=False)]
MetricUsd = Annotated[Decimal, Field(gt=0, lt=Decimal("1e22"), allow_inf_nan=False)]


def _trimmed(max_length: int, min_length: int = 0) -> StringConstraints:
    return StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length)


SignalType = Annotated[str, Field(strict=True), _trimmed(50, 1)]
Symbol = Annotated[str, Field(strict=True), _trimmed(50)]
Reason = Annotated[str, Field(strict=True), _trimmed(2000)]
Source = Annotated[str, Field(strict=True), _trimmed(100)]
IdempotencyKey = Annotated[str, Field(strict=True), _trimmed(200, 1)]


def _check_mint(value: str) -> str:
    if not _BASE58_RE.match(value):
        raise ValueError("must be a Solana mint address: 32 to 44 base58 characters")
    return value


class SignalV1(BaseModel):
    """A buy signal as published on `SIGNALS_TOPIC` (contract section 3)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: UUID
    token_address: MintAddress
    signal_type: SignalType
    signal_strength: Annotated[StrictInt, Field(ge=1, le=5)]
    symbol: Symbol | None = None
    activation_reason: Reason | None = None
    source: Source | None = None
    idempotency_key: IdempotencyKey | None = None
    price_usd: PriceUsd | None = None
    created_at: AwareDatetime | None = None
    market_cap_usd: MetricUsd | None = None
    liquidity_usd: MetricUsd | None = None
    holder_count: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = None

    @field_validator("token_address")
    @classmethod
    def _mint(cls, value: str) -> str:
        return _check_mint(value.strip())

    @field_validator("symbol", "activation_reason", "source")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    def to_domain(self, *, coordinates: str, received_at: datetime) -> Signal:
        """The domain `Signal`; without an idempotency key, the Kafka coordinates are the key."""
        return Signal(
            user_id=self.user_id,
            token_address=self.token_address,
            signal_type=self.signal_type,
            signal_strength=self.signal_strength,
            idempotency_key=self.idempotency_key or coordinates,
            created_at=self.created_at or received_at,
            symbol=self.symbol,
            activation_reason=self.activation_reason,
            source=self.source,
            price_usd=self.price_usd,
            market_cap_usd=self.market_cap_usd,
            liquidity_usd=self.liquidity_usd,
            holder_count=self.holder_count,
        )


class PriceTickV1(BaseModel):
    """A price tick as published on `PRICES_TOPIC` (contract section 4)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    token_address: MintAddress
    price_usd: PriceUsd
    ts: AwareDatetime | None = None

    @field_validator("token_address")
    @classmethod
    def _mint(cls, value: str) -> str:
        return _check_mint(value.strip())


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number this worker accepts")


def parse_json(raw: bytes | None) -> object:
    """Decode a record value as UTF-8 JSON with exact decimals; `InvalidMessage` otherwise."""
    if raw is None:
        raise InvalidMessage("empty message: the record has no value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise InvalidMessage("not JSON this worker accepts: nested too deeply") from exc
    except ValueError as exc:
        raise InvalidMessage(f"not JSON: {_first_line(str(exc))}") from exc


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "invalid"
    return line if len(line) <= limit else line[:limit] + "…"


def describe_validation(exc: ValidationError) -> str:
    """One sentence naming each bad field and why, without echoing huge inputs."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{loc}: {error['msg']}")
    more = len(exc.errors()) - 5
    suffix = f" (and {more} more)" if more > 0 else ""
    return _first_line("; ".join(parts) + suffix, 1000)


def decode_signal(raw: bytes | None) -> SignalV1:
    """A validated `SignalV1` from a record value; `InvalidMessage` with the reason otherwise."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidMessage(f"a signal must be a JSON object, not {_json_kind(data)}")
    try:
        return SignalV1.model_validate(data)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid signal: {describe_validation(exc)}") from exc


def decode_price(raw: bytes | None) -> PriceTickV1:
    """A validated `PriceTickV1` from a record value; `InvalidMessage` with the reason otherwise."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidMessage(f"a price tick must be a JSON object, not {_json_kind(data)}")
    try:
        return PriceTickV1.model_validate(data)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid price tick: {describe_validation(exc)}") from exc


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")
