"""Versioned wire models of the Kafka messages (contract sections 3 and 4) and their decoding.

A ledger reads its input strictly: what could be read two ways, or was likely meant
otherwise, is refused (an `invalid` dead letter with the reason), never guessed at.

- JSON: UTF-8, at most `MAX_MESSAGE_BYTES`; a key twice in one object is refused (it is
  not an error in JSON, but which value counts differs from one reader to the next);
  NaN and Infinity are refused, integers have at most 40 digits.
- Decimals (`price_usd`, `market_cap_usd`, `liquidity_usd`) are JSON numbers or strings
  written as a JSON number is: ASCII digits, an optional leading `-`, an optional
  fraction and exponent (`"0.5"`, `"1.5e-7"`). Refused: other digits (`"١٢"`), `"1_000"`,
  surrounding or inner spaces, `"+1"`, `".5"`, `"5."`, `"0x10"`, `"NaN"`. Numbers are
  parsed as `Decimal` from their text, never through float. A value is rounded to its
  column's places as PostgreSQL rounds (half away from zero: 18 for numeric(30,18) prices,
  8 for numeric(30,8) metrics), and its bounds are checked on the rounded value: above 0,
  and below what the column holds (1e12 for prices, 1e22 for metrics), so a value that
  passes always fits its column.
- Timestamps (`created_at`, `ts`) are RFC 3339 strings with seconds and an offset
  (`2026-11-26T12:00:00Z`, `2026-11-26T12:00:00.5+01:00`; `T` or a space between date
  and time); Unix numbers are refused (seconds or milliseconds cannot be told apart), as
  are offsets without a colon, missing seconds and other ISO 8601 forms. They lie between
  1970 and 9999.
- Integers are strict: no `"5"` or `5.0` into an int; no number into a string.
- Text is normalised to Unicode NFC, then trimmed of whitespace at both ends, then held to
  its column's length: the NFC and NFD spellings of one idempotency key are one key.
  `signal_type` and `idempotency_key` must hold a visible character (a letter, digit,
  punctuation or symbol: whitespace and zero-width or format characters alone are
  refused); an optional text with none is treated as absent. Text may not hold NUL
  characters or unpaired surrogates (PostgreSQL and UTF-8 cannot store them).
- `token_address` is a base58 mint (ASCII), trimmed; a signal for the SOL mint is refused:
  SOL is the quote currency, not a token. `user_id` is any spelling of a UUID that
  pydantic reads (it is stored as a uuid, so every spelling is the same value).

Unknown fields are ignored, as the contract says.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from worker.domain.commands import Command
from worker.domain.exact_json import JsonRefusedError, dumps_exact, loads_exact
from worker.domain.models import SOL_MINT, PriceTick, Signal
from worker.domain.money import MATH_CONTEXT
from worker.errors import InvalidMessage

_BASE58_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")
# A decimal string is written as a JSON number is (RFC 8259 section 6), in ASCII digits.
DECIMAL_PATTERN = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
_DECIMAL_RE = re.compile(DECIMAL_PATTERN, re.ASCII)
# RFC 3339 section 5.6 date-time (a space for the T, as its note allows), ASCII digits.
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[-+][0-9]{2}:[0-9]{2})$"
)
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN, re.ASCII)
# Unicode categories of a visible character: letters, numbers, punctuation, symbols.
_VISIBLE_CATEGORIES = frozenset("LNPS")
MAX_MESSAGE_BYTES = 1_048_576
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def _strict_decimal(value: object) -> object:
    """A decimal string in the JSON number grammar, as a `Decimal`; a JSON number (already
    a `Decimal` or an `int`) as it is; anything else refused."""
    if isinstance(value, str):
        if not _DECIMAL_RE.fullmatch(value):
            raise ValueError(
                f"must be a decimal written as a JSON number (ASCII digits, e.g. 0.5 or "
                f"1.5e-7; no spaces, underscores, '+' or other digits), not {_shown(value)}"
            )
        try:
            return Decimal(value)
        except InvalidOperation as exc:  # an exponent beyond what a Decimal holds
            raise ValueError(f"is not a number this worker accepts: {_shown(value)}") from exc
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        # A float never comes from JSON here (parse_float=Decimal); refused from code too.
        raise ValueError(  # noqa: TRY004 - pydantic reports only a ValueError as invalid
            "must be a decimal: a JSON number or a string holding one"
        )
    if isinstance(value, Decimal) and not value.is_finite():  # never from JSON; from code
        raise ValueError("must be a finite number")
    return value


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _number(value: Decimal, limit: int = 40) -> str:
    """`value` for a message, cut at `limit` characters; in scientific notation when its
    plain text would be longer than any message (1e-999999999999999999: no memory holds it)."""
    exponent = value.as_tuple().exponent
    width = max(value.adjusted(), 0) + max(-exponent, 0) if isinstance(exponent, int) else 0
    if width > MAX_MESSAGE_BYTES:
        return f"{value:.6e}"
    text = f"{value:f}"
    return text if len(text) <= limit else text[:limit] + "…"


def _column(places: int, below: Decimal, column: str) -> AfterValidator:
    """Round to the column's places as PostgreSQL would, then check the bounds on what is
    stored: above 0 and below `below`, what the column holds."""
    step = Decimal(1).scaleb(-places)

    def check(value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError(f"must be greater than 0, not {_number(value)}")
        if value >= below:  # also keeps quantize away from values it cannot hold
            raise ValueError(f"must be less than {below:f} to fit {column}, not {_number(value)}")
        # In a 60-digit context: the default 28 digits cannot hold a price of 1e10 to 18
        # places, and quantize would raise InvalidOperation, which no validator expects.
        rounded = value.quantize(step, rounding=ROUND_HALF_UP, context=MATH_CONTEXT)
        if rounded <= 0:
            raise ValueError(
                f"must be at least {step:f}: {_number(value)} rounds to 0 in {column} "
                f"({places} places)"
            )
        if rounded >= below:
            raise ValueError(
                f"must be less than {below:f} to fit {column}: {_number(value)} rounds to "
                f"{rounded:f} ({places} places)"
            )
        return rounded

    return AfterValidator(check)


def _decimal_schema(below: Decimal) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": float(below)},
                {"type": "string", "pattern": DECIMAL_PATTERN},
            ],
            "description": (
                f"a decimal > 0, as a JSON number or a string in the JSON number grammar; "
                f"below {below:f} after rounding to its column's places"
            ),
        }
    )


def _nfc(value: object) -> object:
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def _storable_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must not contain unpaired surrogates (invalid Unicode)") from exc
    return value


def is_visible(value: str) -> bool:
    """Whether `value` holds a letter, number, punctuation or symbol: not only whitespace,
    zero-width or format characters (Unicode Z*, Cf), controls or combining marks."""
    if value.isascii() and value.isprintable():  # the usual case, without a lookup per char
        return not value.isspace() and bool(value)
    return any(unicodedata.category(char)[0] in _VISIBLE_CATEGORIES for char in value)


def _visible(value: str) -> str:
    if not is_visible(value):
        raise ValueError(
            "must hold a visible character (not only whitespace, zero-width or format characters)"
        )
    return value


def _timestamp_text(value: object) -> object:
    """An RFC 3339 string goes on to pydantic's parser; a number (Unix time: seconds or
    milliseconds?) or another date format is refused. A `datetime` (from code) passes."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        number = isinstance(value, int | Decimal | float) and not isinstance(value, bool)
        raise ValueError(  # noqa: TRY004 - pydantic reports only a ValueError as invalid
            "must be an RFC 3339 timestamp string such as 2026-11-26T12:00:00Z"
            + (", not a number (Unix time is ambiguous: seconds or milliseconds)" if number else "")
        )
    if not _TIMESTAMP_RE.fullmatch(value):
        raise ValueError(
            f"must be an RFC 3339 timestamp with seconds and an offset, such as "
            f"2026-11-26T12:00:00Z, not {_shown(value)}"
        )
    return value


def _in_range(value: datetime) -> datetime:
    if not EARLIEST <= value <= LATEST:
        raise ValueError("must lie between 1970-01-01 and 9999-12-30")
    return value


StrictInt = Annotated[int, Field(strict=True)]
# The pattern is checked by `_check_mint` (after trimming); here it documents the schema.
MintAddress = Annotated[str, Field(strict=True, json_schema_extra={"pattern": _BASE58_RE.pattern})]
PRICE_BELOW = Decimal("1e12")  # numeric(30,18): 12 digits before the point
METRIC_BELOW = Decimal("1e22")  # numeric(30,8): 22 digits before the point
PriceUsd = Annotated[
    Decimal,
    BeforeValidator(_strict_decimal),
    _column(18, PRICE_BELOW, "numeric(30,18)"),
    _decimal_schema(PRICE_BELOW),
]
MetricUsd = Annotated[
    Decimal,
    BeforeValidator(_strict_decimal),
    _column(8, METRIC_BELOW, "numeric(30,8)"),
    _decimal_schema(METRIC_BELOW),
]
Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_timestamp_text),
    AfterValidator(_in_range),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN}),
]


def _trimmed(max_length: int, min_length: int = 0) -> StringConstraints:
    return StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length)


# Text is made NFC first (the before-validator wraps the str schema, so the length checked
# is the stored text's), then trimmed, bounded and checked to be storable; identifying
# text must hold a visible character.
_NFC = BeforeValidator(_nfc)
_STORABLE = AfterValidator(_storable_text)
_VISIBLE = AfterValidator(_visible)
SignalType = Annotated[str, Field(strict=True), _trimmed(50, 1), _NFC, _STORABLE, _VISIBLE]
Symbol = Annotated[str, Field(strict=True), _trimmed(50), _NFC, _STORABLE]
Reason = Annotated[str, Field(strict=True), _trimmed(2000), _NFC, _STORABLE]
Source = Annotated[str, Field(strict=True), _trimmed(100), _NFC, _STORABLE]
IdempotencyKey = Annotated[str, Field(strict=True), _trimmed(200, 1), _NFC, _STORABLE, _VISIBLE]


def _check_mint(value: str) -> str:
    if not _BASE58_RE.match(value):
        raise ValueError("must be a Solana mint address: 32 to 44 base58 characters")
    return value


class SignalV1(BaseModel):
    """A buy signal as published on `SIGNALS_TOPIC` (contract section 3)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: UUID
    token_address: MintAddress
    signal_type: Annotated[
        SignalType, Field(description="NFC, trimmed; must hold a visible character")
    ]
    signal_strength: Annotated[StrictInt, Field(ge=1, le=5)]
    symbol: Symbol | None = None
    activation_reason: Reason | None = None
    source: Source | None = None
    idempotency_key: Annotated[
        IdempotencyKey | None,
        Field(description="NFC, trimmed; must hold a visible character"),
    ] = None
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
        # Nothing visible (empty, or only zero-width or format characters) is no value.
        return value if value and is_visible(value) else None

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

    def to_domain(self, *, received_at: datetime) -> PriceTick:
        """The domain tick; observed at `ts`, else at `received_at` (its record's timestamp)."""
        return PriceTick(self.token_address, self.price_usd, self.ts or received_at)


class CandleV1(BaseModel):
    """An OHLC candle of a file that `prices import` reads (not a Kafka message): its
    prices validated as a tick's `price_usd`, its `ts` (the interval's start) as a tick's
    `ts`, and required; the interval comes from the command line."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    token_address: MintAddress
    ts: Timestamp
    open: PriceUsd
    high: PriceUsd
    low: PriceUsd
    close: PriceUsd

    @field_validator("token_address")
    @classmethod
    def _mint(cls, value: str) -> str:
        return _check_mint(value.strip())


# ----------------------------------------------------------------------------- commands
# Contract section 4b: what a user asks of its agents, on `COMMANDS_TOPIC`, keyed by user id
# (co-partitioned with the signals, so a user's commands and signals are applied in one
# order). One model per command, told apart by `command`.

SOL_BELOW = Decimal("1e12")  # numeric(30,18): 12 digits before the point
SolAmount = Annotated[
    Decimal,
    BeforeValidator(_strict_decimal),
    _column(18, SOL_BELOW, "numeric(30,18)"),
    _decimal_schema(SOL_BELOW),
]
AgentName = Annotated[str, Field(strict=True), _trimmed(255, 1), _NFC, _STORABLE, _VISIBLE]
Email = Annotated[str, Field(strict=True), _trimmed(255, 3), _NFC, _STORABLE, _VISIBLE]
PauseMode = Literal["simulation", "live", "all"]
# What PostgreSQL's jsonb holds (its numeric: at most 131072 digits before the point and
# 16383 after it), and how deep a config or patch may nest (a trading_config nests about
# 4 levels; the payload's serialiser stops at about 250).
JSONB_MAX_ADJUSTED = 131_071
JSONB_MIN_EXPONENT = -16_383
MAX_JSON_DEPTH = 64


def _jsonb_storable(value: dict[str, Any]) -> dict[str, Any]:
    """`value` when PostgreSQL can store it as jsonb (the agent's config, the command's
    result row): no text with NUL or unpaired surrogates (in keys or values), no number
    beyond numeric's range, at most `MAX_JSON_DEPTH` levels; else a `ValueError` naming
    where. Refused here, the command is an `invalid` dead letter with the reason; stored,
    it would fail its whole transaction."""
    stack: list[tuple[object, str, int]] = [(value, "", 1)]
    while stack:
        item, where, depth = stack.pop()
        at = f" (at {_shown(where)})" if where else ""
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"is nested more than {MAX_JSON_DEPTH} levels deep{at}")
        if isinstance(item, dict):
            for key, inner in item.items():
                path = f"{where}.{key}" if where else str(key)
                stack.extend(((key, path, depth), (inner, path, depth + 1)))
        elif isinstance(item, list):
            stack.extend((inner, f"{where}[{i}]", depth + 1) for i, inner in enumerate(item))
        elif isinstance(item, str):
            try:
                _storable_text(item)
            except ValueError as exc:
                raise ValueError(f"{exc}{at}") from None
        elif isinstance(item, Decimal) and (
            item.adjusted() > JSONB_MAX_ADJUSTED
            or int(item.as_tuple().exponent) < JSONB_MIN_EXPONENT
        ):
            raise ValueError(f"holds a number PostgreSQL's numeric cannot store{at}")
    return value


# A config or patch as a JSON object (its numbers exact, storable as jsonb); held to
# AGENT_CONFIG_MAX_BYTES and the config rules when applied (a refusal with the reason, not
# a dead letter).
JsonObject = Annotated[
    dict[str, Any],
    AfterValidator(_jsonb_storable),
    WithJsonSchema({"type": "object", "description": "a trading_config JSON object"}),
]


class _CommandBase(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: UUID
    idempotency_key: Annotated[
        IdempotencyKey | None,
        Field(
            description="NFC, trimmed; the same key from the same user is the same command "
            "(applied once); absent: the record's Kafka coordinates"
        ),
    ] = None
    created_at: Annotated[
        Timestamp | None, Field(description="the command's event time; absent: its record's")
    ] = None

    def key(self, coordinates: str) -> str:
        """The idempotency key; without one, the Kafka coordinates."""
        return self.idempotency_key or coordinates

    def event_time(self, received_at: datetime) -> datetime:
        """`created_at`, else its record's timestamp."""
        return self.created_at or received_at

    def payload_json(self) -> str:
        """The command as validated, as JSON (numbers exact)."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude_none=True)
        for name in ("config", "patch"):
            value = getattr(self, name, None)
            if value is not None:
                data[name] = value
        return dumps_exact(data)

    def to_domain(self, *, coordinates: str, at: datetime) -> Command:
        """The domain `Command`, decided at `at`; without an idempotency key, the Kafka
        coordinates are the key."""
        fields = {
            name: getattr(self, name)
            for name in (
                "agent_id", "name", "email", "trading_mode", "config", "patch", "mode",
                "token_address",
            )
            if hasattr(self, name)
        }  # fmt: skip
        amount = getattr(self, "amount", None) or getattr(self, "sol", None)
        return Command(
            kind=getattr(self, "command"),  # noqa: B009 - every concrete model has it
            user_id=self.user_id,
            key=self.key(coordinates),
            at=at,
            record=coordinates,
            payload=self.payload_json(),
            amount=amount,
            **fields,
        )


class CreateUserV1(_CommandBase):
    """Create the user `user_id` (refused when it exists, or its email is taken)."""

    command: Literal["create_user"]
    email: Email


class CreateAgentV1(_CommandBase):
    """Create an agent with a simulation wallet, funded with `sol` when given."""

    command: Literal["create_agent"]
    agent_id: Annotated[
        UUID | None, Field(description="absent: derived from user_id and the idempotency key")
    ] = None
    name: AgentName
    trading_mode: Literal["simulation", "live"] = "simulation"
    config: Annotated[
        JsonObject | None, Field(description="absent: the complete default config")
    ] = None
    sol: SolAmount | None = None


class RenameAgentV1(_CommandBase):
    """Rename an agent."""

    command: Literal["rename_agent"]
    agent_id: UUID
    name: AgentName


class ReplaceConfigV1(_CommandBase):
    """Replace an agent's trading_config (validated as a stored config is)."""

    command: Literal["replace_config"]
    agent_id: UUID
    config: JsonObject


class PatchConfigV1(_CommandBase):
    """Patch an agent's trading_config with a JSON Merge Patch (RFC 7396)."""

    command: Literal["patch_config"]
    agent_id: UUID
    patch: JsonObject


class PauseV1(_CommandBase):
    """Turn automated trading off for a mode (or both)."""

    command: Literal["pause"]
    agent_id: UUID
    mode: PauseMode = "all"


class ResumeV1(_CommandBase):
    """Turn automated trading on again for a mode (or both)."""

    command: Literal["resume"]
    agent_id: UUID
    mode: PauseMode = "all"


class DepositV1(_CommandBase):
    """Add simulation SOL to the agent's simulation wallet (a DEPOSIT)."""

    command: Literal["deposit"]
    agent_id: UUID
    amount: SolAmount


class WithdrawV1(_CommandBase):
    """Take simulation SOL out of the agent's simulation wallet (a WITHDRAWAL), never
    below zero."""

    command: Literal["withdraw"]
    agent_id: UUID
    amount: SolAmount


class ClosePositionsV1(_CommandBase):
    """Close the agent's open simulation position in `token_address` (absent: all of them)
    by hand, at the latest price as of the command's time."""

    command: Literal["close_positions"]
    agent_id: UUID
    token_address: MintAddress | None = None

    @field_validator("token_address")
    @classmethod
    def _mint(cls, value: str | None) -> str | None:
        return None if value is None else _check_mint(value.strip())


CommandV1 = Annotated[
    CreateUserV1
    | CreateAgentV1
    | RenameAgentV1
    | ReplaceConfigV1
    | PatchConfigV1
    | PauseV1
    | ResumeV1
    | DepositV1
    | WithdrawV1
    | ClosePositionsV1,
    Field(discriminator="command"),
]
COMMAND_ADAPTER: TypeAdapter[CommandV1] = TypeAdapter(CommandV1)
COMMAND_NAMES = tuple(
    m.model_fields["command"].annotation.__args__[0]  # type: ignore[union-attr]
    for m in (
        CreateUserV1,
        CreateAgentV1,
        RenameAgentV1,
        ReplaceConfigV1,
        PatchConfigV1,
        PauseV1,
        ResumeV1,
        DepositV1,
        WithdrawV1,
        ClosePositionsV1,
    )
)


def decode_command(raw: bytes | None) -> CommandV1:
    """A validated command from a record value; `InvalidMessage` with the reason otherwise."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidMessage(f"a command must be a JSON object, not {_json_kind(data)}")
    kind = data.get("command")
    if kind not in COMMAND_NAMES:
        raise InvalidMessage(
            f"invalid command: command must be one of {', '.join(COMMAND_NAMES)}, "
            f"not {_shown(str(kind)) if isinstance(kind, str) else _json_kind(kind)}"
        )
    try:
        return COMMAND_ADAPTER.validate_python(data)
    except ValidationError as exc:
        described = describe_validation(exc).replace(f"{kind}.", "")
        raise InvalidMessage(f"invalid {kind} command: {described}") from exc


def check_command_time(
    command: CommandV1, *, received_at: datetime, now: datetime, ahead: timedelta
) -> None:
    """`InvalidMessage` when the command's time lies more than `ahead` after its record's
    timestamp or the worker's clock (as for a signal: `check_signal_time`)."""
    stamped = command.created_at if command.created_at is not None else received_at
    limit = min(received_at, now) + ahead
    if stamped > limit:
        what = "created_at" if command.created_at is not None else "its record's timestamp"
        raise InvalidMessage(
            f"invalid command: {what} {stamped.isoformat()} is more than "
            f"{ahead.total_seconds():g}s ahead of the record's timestamp "
            f"({received_at.isoformat()}) or the worker's clock (PRICE_MAX_FUTURE_S)"
        )


# ----------------------------------------------------------------------------- events
# Contract section 4c: what the worker publishes on EVENTS_TOPIC (`worker.pipeline.relay`),
# one model per event type, told apart by `type`. Written by the outbox's triggers (schema
# 0013) and the pipeline (dead letters); these models are their documentation and schema.


class EventTruncation(BaseModel):
    """On an event larger than EVENTS_TOPIC accepts (`max.message.bytes`) only: it was sent
    without its list and object fields, named here with their sizes; they stay in the tables
    it is about."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: list[str]
    counts: Annotated[
        dict[str, int], Field(description="each left-out field's items (list) or keys (object)")
    ]
    max_event_bytes: int


def _left_out(event: _EventBase, name: str) -> None:
    """A field that may be absent only when `truncated` names it."""
    if name not in event.model_fields_set and (
        event.truncated is None or name not in event.truncated.fields
    ):
        raise ValueError(f"{name}: absent, and not named by truncated.fields")


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Annotated[
        UUID,
        Field(description="derived from what the event is about: a re-sent event has the same id"),
    ]
    user_id: UUID | None
    event_at: Annotated[
        AwareDatetime, Field(description="the decision time of the record that caused it")
    ]
    truncated: EventTruncation | None = None


class TradeEventV1(_EventBase):
    """A buy, a DCA buy or a take-profit sale (one `agent_transactions` SWAP): `sol` paid or
    received (gross), `token_amount` bought or sold, at `price_sol` SOL per token."""

    type: Literal["buy", "dca_buy", "take_profit_sale"]
    agent_id: UUID
    wallet_address: str | None
    position_id: UUID | None
    transaction_id: UUID
    signal_id: int | None
    token_address: str
    token_symbol: str | None
    sol: Decimal
    token_amount: Decimal
    price_sol: Decimal | None
    value_usd: Decimal
    network_fee_sol: Decimal | None
    protocol_fee_sol: Decimal | None


class PositionClosedV1(_EventBase):
    """A full exit (`agent_historical_swaps`) with its reason and P/L; its sale is
    `sale_transaction_id` (a stop-loss, stale or manual sale has no event of its own)."""

    type: Literal["position_closed"]
    agent_id: UUID
    wallet_address: str | None
    position_id: UUID | None
    purchase_transaction_id: UUID | None
    sale_transaction_id: UUID | None
    signal_id: int | None
    token_address: str
    token_symbol: str
    close_reason: str | None
    amount: Decimal
    purchase_price: Decimal
    sale_price: Decimal
    change_percent: Decimal
    profit_loss_sol: Decimal
    profit_loss_usd: Decimal
    purchase_time: AwareDatetime


class NotTraded(BaseModel):
    """One agent's decision not to trade (`skipped`) or failure to (`failed`), and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: UUID
    status: Literal["skipped", "failed"]
    reason: str | None


class ExecutionsNotTradedV1(_EventBase):
    """The agents that did not trade on a signal, each with its reason (one event per
    signal: at fan-out 100 one per agent was most of the events)."""

    type: Literal["executions_not_traded"]
    signal_id: int
    signal_key: str
    token_address: str
    token_symbol: str | None
    executions: Annotated[
        list[NotTraded] | None,
        Field(
            description="absent only when `truncated` names it (thousands of agents): read "
            "them from `signal_executions` by `signal_id`"
        ),
    ] = None

    @model_validator(mode="after")
    def _whole_unless_truncated(self) -> ExecutionsNotTradedV1:
        _left_out(self, "executions")
        return self


class CommandResultEventV1(_EventBase):
    """A command applied or refused (`command_results`)."""

    type: Literal["command_result"]
    agent_id: UUID | None
    command: str
    idempotency_key: str
    status: Literal["applied", "refused"]
    reason: str | None
    changes: Annotated[
        dict[str, Any] | None,
        Field(description="absent only when `truncated` names it: `command_results.changes`"),
    ] = None
    source_record: str | None

    @model_validator(mode="after")
    def _whole_unless_truncated(self) -> CommandResultEventV1:
        _left_out(self, "changes")
        return self


class DeadLetterEventV1(_EventBase):
    """A record the worker dead-lettered (its user when its key is a user id)."""

    type: Literal["dead_letter"]
    source_record: str
    reason: str
    kind: str


EventV1 = Annotated[
    TradeEventV1
    | PositionClosedV1
    | ExecutionsNotTradedV1
    | CommandResultEventV1
    | DeadLetterEventV1,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[EventV1] = TypeAdapter(EventV1)


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
        return loads_exact(text)
    except JsonRefusedError as exc:
        raise InvalidMessage(str(exc)) from exc


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


def check_signal_time(
    signal: SignalV1, *, received_at: datetime, now: datetime, ahead: timedelta
) -> None:
    """`InvalidMessage` when the signal's time (its `created_at`, else its record's
    timestamp) lies more than `ahead` after the record's timestamp or the worker's clock
    (whichever is earlier): it is the signal's place in the order of everything the worker
    applies (`worker.pipeline.timeline`), and its partition's records after it would be
    decided no earlier than it, so a time far ahead would hold them all until it passed."""
    stamped = signal.created_at if signal.created_at is not None else received_at
    limit = min(received_at, now) + ahead
    if stamped > limit:
        what = "created_at" if signal.created_at is not None else "its record's timestamp"
        raise InvalidMessage(
            f"invalid signal: {what} {stamped.isoformat()} is more than "
            f"{ahead.total_seconds():g}s ahead of the record's timestamp "
            f"({received_at.isoformat()}) or the worker's clock (PRICE_MAX_FUTURE_S)"
        )
