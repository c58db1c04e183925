"""Versioned wire models of the Kafka messages (contract sections 3 and 4) and their decoding.

Numbers are parsed as `Decimal` from their JSON text (never through float), NaN and
Infinity are refused, integers and strings are strict (no `"5x"` or `"5"` into an int, no
number into a string). Unknown fields are ignored, as the contract says.

The models refuse what the database would refuse, so such a record is an ordinary
`invalid` dead letter with a reason in the publisher's terms, never a database error in
the middle of a batch: prices are rounded to the 18 places of numeric(30,18) (half away
from zero, as PostgreSQL rounds) and must still be above 0, USD metrics likewise to 8
places; text may not hold NUL characters or unpaired surrogates (PostgreSQL and UTF-8
cannot store them); timestamps lie between 1970 and 9999; integers have at most 40
digits. A signal for the SOL mint is refused: SOL is the quote currency, not a token.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, NoReturn
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from worker.domain.models import SOL_MINT, Signal
from worker.domain.money import MATH_CONTEXT
from worker.errors import InvalidMessage

_BASE58_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")
MAX_MESSAGE_BYTES = 1_048_576
MAX_INT_DIGITS = 40
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def _rounded(places: int, column: str) -> AfterValidator:
    """Round to the column's places as PostgreSQL would; what is left must still be > 0."""
    step = Decimal(1).scaleb(-places)

    def check(value: Decimal) -> Decimal:
        # In a 60-digit context: the default 28 digits cannot hold a price of 1e10 to 18
        # places, and quantize would raise InvalidOperation, which no validator expects.
        rounded = value.quantize(step, rounding=ROUND_HALF_UP, context=MATH_CONTEXT)
        if rounded <= 0:
            raise ValueError(
                f"must be at least {step:f}: {value:f} rounds to 0 in {column} ({places} places)"
            )
        return rounded

    return AfterValidator(check)


def _storable_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must not contain unpaired surrogates (invalid Unicode)") from exc
    return value


def _in_range(value: datetime) -> datetime:
    if not EARLIEST <= value <= LATEST:
        raise ValueError("must lie between 1970-01-01 and 9999-12-30")
    return value


StrictInt = Annotated[int, Field(strict=True)]
# The pattern is checked by `_check_mint` (after trimming); here it documents the schema.
MintAddress = Annotated[str, Field(strict=True, json_schema_extra={"pattern": _BASE58_RE.pattern})]
# Upper bounds keep values inside their columns: numeric(30,18) prices, numeric(30,8) metrics.
PriceUsd = Annotated[
    Decimal, Field(gt=0, lt=Decimal("1e12"), allow_inf_nan=False), _rounded(18, "numeric(30,18)")
]
MetricUsd = Annotated[
    Decimal, Field(gt=0, lt=Decimal("1e22"), allow_inf_nan=False), _rounded(8, "numeric(30,8)")
]
Timestamp = Annotated[AwareDatetime, AfterValidator(_in_range)]


def _trimmed(max_length: int, min_length: int = 0) -> StringConstraints:
    return StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length)


SignalType = Annotated[str, Field(strict=True), _trimmed(50, 1), AfterValidator(_storable_text)]
Symbol = Annotated[str, Field(strict=True), _trimmed(50), AfterValidator(_storable_text)]
Reason = Annotated[str, Field(strict=True), _trimmed(2000), AfterValidator(_storable_text)]
Source = Annotated[str, Field(strict=True), _trimmed(100), AfterValidator(_storable_text)]
IdempotencyKey = Annotated[
    str, Field(strict=True), _trimmed(200, 1), AfterValidator(_storable_text)
]


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
    created_at: Timestamp | None = None
    market_cap_usd: MetricUsd | None = None
    liquidity_usd: MetricUsd | None = None
    holder_count: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = None

    @field_validator("token_address")
    @classmethod
    def _mint(cls, value: str) -> str:
        mint = _check_mint(value.strip())
        if mint == SOL_MINT:
            raise ValueError("is the SOL mint: SOL is the quote currency, not a tradable token")
        return mint

    @field_validator("symbol", "activation_reason", "source")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    def digest(self) -> bytes:
        """16 bytes of SHA-256 over the validated fields (unknown fields left out): the same
        payload, however it is spelled, has the same digest."""
        canonical = orjson.dumps(
            self.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS
        )
        return hashlib.sha256(canonical).digest()[:16]

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
            digest=self.digest(),
            record=coordinates,
        )


class PriceTickV1(BaseModel):
    """A price tick as published on `PRICES_TOPIC` (contract section 4)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    token_address: MintAddress
    price_usd: PriceUsd
    ts: Timestamp | None = None

    @field_validator("token_address")
    @classmethod
    def _mint(cls, value: str) -> str:
        return _check_mint(value.strip())


class _UnacceptedNumberError(ValueError):
    """A JSON number this worker does not accept (NaN, Infinity, too many digits)."""


def _refuse_constant(name: str) -> NoReturn:
    raise _UnacceptedNumberError(f"{name} is not a number this worker accepts")


def _parse_int(digits: str) -> int:
    count = len(digits.lstrip("-"))
    if count > MAX_INT_DIGITS:
        raise _UnacceptedNumberError(
            f"a number with {count} digits is too long (at most {MAX_INT_DIGITS} digits)"
        )
    return int(digits)


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
        return json.loads(
            text, parse_float=Decimal, parse_int=_parse_int, parse_constant=_refuse_constant
        )
    except _UnacceptedNumberError as exc:
        raise InvalidMessage(f"not JSON this worker accepts: {exc}") from exc
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
        parts.append(f"{loc}: {error['msg'].removeprefix('Value error, ')}")
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


def check_tick_time(
    tick: PriceTickV1, *, received_at: datetime, now: datetime, ahead: timedelta
) -> None:
    """`InvalidMessage` when the tick's `ts` lies more than `ahead` after the record's
    timestamp or the worker's clock (whichever is earlier): stored, such a tick would make
    every real tick after it look older, freezing the price until its `ts` has passed.
    A tick without `ts` is stamped with its record's timestamp, which is held to the
    worker's clock the same way (a producer's clock, or a broker that lets it set any)."""
    if tick.ts is None:
        if received_at > now + ahead:
            raise InvalidMessage(
                f"invalid price tick: it has no ts and its record's timestamp "
                f"({received_at.isoformat()}) is more than {ahead.total_seconds():g}s ahead "
                "of the worker's clock (PRICE_MAX_FUTURE_S)"
            )
        return
    limit = min(received_at, now) + ahead
    if tick.ts > limit:
        raise InvalidMessage(
            f"invalid price tick: ts {tick.ts.isoformat()} is more than "
            f"{ahead.total_seconds():g}s ahead of the record's timestamp "
            f"({received_at.isoformat()}) or the worker's clock (PRICE_MAX_FUTURE_S)"
        )
