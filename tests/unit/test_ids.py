"""The ids of the rows a trade writes (`worker.domain.ids`): functions of the event only.

Pinned values: an id is stored, so a change of how it is derived is a change of every
ledger (a changelog entry), never an accident."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import example, given
from hypothesis import strategies as st

from worker.domain.ids import buy_transaction_id, position_id, tick_transaction_id

USER = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
AGENT = uuid.UUID(int=1)
POSITION = uuid.UUID(int=7)
AT = datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)


def test_ids_are_pinned() -> None:
    assert buy_transaction_id(USER, "k-1", AGENT) == uuid.UUID(
        "575cec10-bbf5-56be-be8b-a7a366e9775b"
    )
    assert position_id(USER, "k-1", AGENT) == uuid.UUID("e6170e69-56bf-5104-bb09-9ebc98dea2fb")
    # Times hashed as whole microseconds since the epoch (1772355600123456 here).
    assert tick_transaction_id(POSITION, AT, AT, "dca", 0) == uuid.UUID(
        "75b0a6ec-7a88-57aa-9b0f-ae46319e2218"
    )


def test_a_tick_id_counts_times_as_instants_whatever_their_offset() -> None:
    paris = AT.astimezone(timezone(timedelta(hours=1)))
    assert tick_transaction_id(POSITION, paris, paris, "dca", 0) == tick_transaction_id(
        POSITION, AT, AT, "dca", 0
    )


def test_each_part_of_a_tick_id_names_another_row() -> None:
    base = (POSITION, AT, AT, "take_profit", 0)
    variants = [
        (uuid.UUID(int=8), AT, AT, "take_profit", 0),
        (POSITION, AT + timedelta(microseconds=1), AT, "take_profit", 0),
        (POSITION, AT, AT - timedelta(microseconds=1), "take_profit", 0),
        (POSITION, AT, AT, "stale_trade", 0),
        (POSITION, AT, AT, "take_profit", 1),
    ]
    ids = {tick_transaction_id(*base), *(tick_transaction_id(*v) for v in variants)}
    assert len(ids) == 1 + len(variants)


@given(key=st.text(max_size=30), other=st.text(max_size=30), agent=st.uuids())
@example(key="a:b", other="a", agent=AGENT)  # separators inside a key
@example(key="k-1", other="k-10", agent=AGENT)
def test_buy_ids_depend_on_the_natural_key_and_agent_only(
    key: str, other: str, agent: uuid.UUID
) -> None:
    assert buy_transaction_id(USER, key, agent) == buy_transaction_id(USER, key, agent)
    # A position and its purchase never share an id.
    assert buy_transaction_id(USER, key, agent) != position_id(USER, key, agent)
    if key != other:
        assert buy_transaction_id(USER, key, agent) != buy_transaction_id(USER, other, agent)
        assert position_id(USER, key, agent) != position_id(USER, other, agent)
    if agent != AGENT:
        assert buy_transaction_id(USER, key, agent) != buy_transaction_id(USER, key, AGENT)
