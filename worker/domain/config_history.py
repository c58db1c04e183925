"""Which version of an agent's settings decides an event: the one in force at the event's
decision time (`schema/0008_agent_config_history.sql` keeps every version).

A version holds what a decision reads from the agents row: the config, the trading mode
and the automated-trading switches. The version in force at a time is the last one (by
`valid_from`, then id) that starts at or before it; before the first version (the agent's
creation) the first one, so a tick older than an agent's first version still exits its
positions by rules it had. Live and replay both decide by this rule, so an edit made
mid-stream splits the stream at the edit's time however late the worker gets to it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from worker.domain.config_reading import StoredConfigText
from worker.domain.models import PriceTick, Signal


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """One version of an agent's settings (`agent_config_history`), in force from
    `valid_from`. `text` is the stored config's JSON text (None: NULL; an
    `OversizedConfig`: too large to read); None as `id` marks the agents row itself, for
    an agent without history (its rows written with the triggers disabled)."""

    id: int | None
    valid_from: datetime
    trading_mode: str
    automated_trading_simulation: bool
    automated_trading_live: bool
    text: StoredConfigText = None


def decision_time(event: Signal | PriceTick) -> datetime:
    """The time at which an event is decided (`decision_time` of the event: the `at` the
    pipeline set, else its own time): the clock of every decision about it, including which
    config version is in force."""
    return event.decision_time


def in_force(versions: Sequence[ConfigVersion], at: datetime) -> ConfigVersion:
    """The version in force at `at` among `versions` (in order of `valid_from`, then id;
    at least one): the last starting at or before `at`, else the first."""
    index = bisect_right(versions, at, key=lambda v: v.valid_from)
    return versions[max(index - 1, 0)]


def boundaries(
    versions: Sequence[ConfigVersion], since: datetime, until: datetime
) -> list[datetime]:
    """The times in (`since`, `until`] at which a version among `versions` starts: where a
    run of events from `since` to `until` must be split so that one version decides each
    part."""
    return sorted({v.valid_from for v in versions if since < v.valid_from <= until})
