"""What a command does, decided without I/O: the outcome, the config it would store, and the
rows' shapes (`worker.handlers.commands` reads and writes around these).

A command is `applied` (with what it changed) or `refused` (with one sentence why, naming
the numbers); a refusal changes nothing. A config (`create_agent`, `replace_config`,
`patch_config`) is held to the rules a stored config is (`worker.domain.config_reading`:
the same reader, the same size cap AGENT_CONFIG_MAX_BYTES), so an agent never gets a config
its next signal would fail on; its unknown keys are reported in the result, as
`agents lint` reports them, and kept (Nexgent's own UI may use them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from worker.domain.config import AgentTradingConfig
from worker.domain.config_reading import StoredConfigText, read_config, text_bytes
from worker.domain.exact_json import JsonRefusedError, dumps_exact, loads_exact


@dataclass(frozen=True, slots=True)
class AgentState:
    """An agent as a command sees it."""

    id: UUID
    user_id: UUID
    name: str
    trading_mode: str
    automated_trading_simulation: bool
    automated_trading_live: bool
    created_at: datetime
    config_text: StoredConfigText
    wallet_address: str | None
    sol_balance: Decimal | None


@dataclass(frozen=True, slots=True)
class Transfer:
    """A `DEPOSIT` or `WITHDRAWAL` of simulation SOL (contract section 5: SOL named in
    `output_*` for a deposit, in `input_*` for a withdrawal)."""

    id: UUID
    agent_id: UUID
    wallet_address: str
    kind: str  # DEPOSIT | WITHDRAWAL
    amount: Decimal
    at: datetime
    value_usd: Decimal
    sol_usd: Decimal


@dataclass(slots=True)
class Outcome:
    """A command's result: `reason` set when refused; `changes` what it changed (JSON)."""

    reason: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    agent_id: UUID | None = None

    @property
    def status(self) -> str:
        """`applied` or `refused`."""
        return "refused" if self.reason is not None else "applied"


def refused(reason: str, agent_id: UUID | None = None) -> Outcome:
    """A refusal with its reason."""
    return Outcome(reason=reason, agent_id=agent_id)


@dataclass(frozen=True, slots=True)
class CheckedConfig:
    """A config a command would store: its JSON text, or why it cannot be (`error`), and
    the keys the worker ignores in it."""

    text: str
    error: str | None
    unknown_keys: tuple[str, ...] = ()


def check_config(config: dict[str, Any] | None, max_bytes: int) -> CheckedConfig:
    """`config` (None: the complete defaults, written out so a user can read and edit
    them) as it would be stored, checked by the stored configs' rules."""
    text = default_config_text() if config is None else dumps_exact(config)
    size = text_bytes(text)
    if size > max_bytes:
        return CheckedConfig(
            text,
            f"invalid trading_config: {size:,} bytes, over the {max_bytes:,}-byte cap "
            "(AGENT_CONFIG_MAX_BYTES)",
        )
    reading = read_config(text)
    return CheckedConfig(text, reading.error, reading.unknown_keys)


def default_config_text() -> str:
    """The complete default config as JSON, its numbers as JSON numbers (Nexgent's UI
    reads them as numbers)."""
    defaults = AgentTradingConfig().model_dump(mode="python", by_alias=True, exclude_none=True)
    return dumps_exact(defaults)


def same_command(stored_kind: str, stored_payload: str, kind: str, payload: str) -> bool:
    """Whether a stored command (its kind and payload JSON: jsonb's text, keys reordered)
    asks what this one does, whenever each was stamped (a producer re-sending after a
    timeout may stamp it again): a redelivery, not a key reused for another command."""
    if stored_kind != kind:
        return False
    try:
        old, new = loads_exact(stored_payload), loads_exact(payload)
    except JsonRefusedError:  # pragma: no cover - both were written by `dumps_exact`
        return False
    if isinstance(old, dict) and isinstance(new, dict):
        old.pop("created_at", None)
        new.pop("created_at", None)
    return old == new


def mode_switches(mode: str, on: bool) -> tuple[bool | None, bool | None]:
    """The (simulation, live) automated-trading switches a pause or resume of `mode` sets
    (None: left as it is)."""
    return (
        on if mode in ("simulation", "all") else None,
        on if mode in ("live", "all") else None,
    )


@dataclass(frozen=True, slots=True)
class Command:
    """A validated command (`worker.messages.CommandV1.to_domain`), decided at `at`: its
    kind, owner and idempotency key, the record it came from, the payload as recorded
    (JSON), and the fields of its kind."""

    kind: str
    user_id: UUID
    key: str
    at: datetime
    record: str | None
    payload: str
    agent_id: UUID | None = None
    name: str | None = None
    email: str | None = None
    trading_mode: str = "simulation"
    config: dict[str, Any] | None = None
    patch: dict[str, Any] | None = None
    mode: str = "all"
    amount: Decimal | None = None
    token_address: str | None = None
