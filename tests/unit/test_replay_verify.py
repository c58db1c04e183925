"""The differ of `replay --verify` on constructed ledgers: identical, or each difference
named with its row and both values; and the replayed side built from a replay's store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest

from worker.domain.ledger_rows import (
    BALANCES,
    EXECUTIONS,
    POSITIONS,
    TABLES,
    TRANSACTIONS,
    LedgerRow,
)
from worker.domain.models import SOL_MINT, ExecutionStatus, Signal
from worker.domain.records import AgentSetup, ExecutionRow
from worker.replay.memory import MemoryStore
from worker.replay.verify import Comparison, compare, replayed_rows, report_lines

AGENT = "00000000-0000-0000-0000-00000000000a"
AT = datetime(2026, 1, 1, tzinfo=UTC)


def _ledger() -> list[LedgerRow]:
    return [
        LedgerRow(EXECUTIONS, ("u", "k1", AGENT), {"status": "success", "error": None}),
        LedgerRow(EXECUTIONS, ("u", "k2", AGENT), {"status": "skipped", "error": "low"}),
        LedgerRow(
            TRANSACTIONS,
            (AGENT, "u/k1", "buy", "1"),
            {"input_amount": Decimal("1.500000000"), "time": AT},
        ),
        LedgerRow(BALANCES, ("w", SOL_MINT), {"balance": Decimal("8.5")}),
        LedgerRow(POSITIONS, (AGENT, "u/k1", "T"), {"state": "open", "peak_price": None}),
    ]


def _changed(rows: list[LedgerRow], index: int, **values: object) -> list[LedgerRow]:
    out = list(rows)
    out[index] = replace(rows[index], values={**rows[index].values, **values})
    return out


def test_identical_ledgers_compare_identical_with_their_counts() -> None:
    live = _ledger()
    # Decimals compare by value: 1.5 is 1.500000000 (PostgreSQL keeps a column's scale).
    replayed = _changed(live, 2, input_amount=Decimal("1.5"))
    result = compare(live, replayed)
    assert result.identical
    assert result.counts == {EXECUTIONS: 2, TRANSACTIONS: 1, BALANCES: 1, POSITIONS: 1}
    assert report_lines(result, 10) == [
        "identical: 2 executions, 1 transactions, 1 balances, 1 positions compared"
    ]


@pytest.mark.parametrize(
    ("index", "values", "line"),
    [
        (2, {"input_amount": Decimal("1.500000001")},
         f"transactions agent {AGENT}, signal u/k1, kind buy, n 1: input_amount live 1.5 "
         "replay 1.500000001"),
        (0, {"status": "failed", "error": "no price"},
         f"executions user u, signal k1, agent {AGENT}: error live - replay no price; "
         "status live success replay failed"),
        (3, {"balance": Decimal(0)},
         f"balances wallet w, token {SOL_MINT}: balance live 8.5 replay 0"),
        (4, {"peak_price": Decimal("0.002")},
         f"positions agent {AGENT}, signal u/k1, token T: peak_price live - replay 0.002"),
    ],
)  # fmt: skip
def test_a_changed_value_is_one_difference_naming_the_row_and_both_values(
    index: int, values: dict[str, object], line: str
) -> None:
    result = compare(_ledger(), _changed(_ledger(), index, **values))
    assert [d.line() for d in result.differences] == [line]
    assert report_lines(result, 10)[-1].startswith("1 difference(s) in 2 executions")


def test_a_row_on_one_side_only_is_named_with_its_side() -> None:
    live = _ledger()
    extra = LedgerRow(TRANSACTIONS, (AGENT, "u/k1", "exit", "1"), {"input_amount": Decimal(1)})
    result = compare(live, [*live[:3], *live[4:], extra])
    assert [d.line() for d in result.differences] == [
        f"transactions agent {AGENT}, signal u/k1, kind exit, n 1: only in the replay ledger",
        f"balances wallet w, token {SOL_MINT}: only in the live ledger",
    ]


def test_ignored_columns_are_left_out() -> None:
    replayed = _changed(_ledger(), 2, time=datetime(2027, 1, 1, tzinfo=UTC))
    assert not compare(_ledger(), replayed).identical
    assert compare(_ledger(), replayed, ignore={"time"}).identical


def test_only_the_first_differences_are_printed_with_their_number() -> None:
    live = [LedgerRow(BALANCES, ("w", f"t{i}"), {"balance": Decimal(i)}) for i in range(5)]
    result = compare(live, [])
    lines = report_lines(result, 2)
    assert lines == [
        "balances wallet w, token t0: only in the live ledger",
        "balances wallet w, token t1: only in the live ledger",
        "5 difference(s) (the first 2 shown) in 0 executions, 0 transactions, 5 balances, "
        "0 positions compared",
    ]
    assert result.differences[0].as_dict() == {
        "table": BALANCES, "key": {"wallet": "w", "token": "t0"}, "only": "live", "columns": [],
    }  # fmt: skip


def test_two_rows_under_one_key_are_refused() -> None:
    row = _ledger()[0]
    with pytest.raises(ValueError, match="two rows with the key"):
        compare([row, row], [])


def test_an_empty_comparison_is_identical() -> None:
    assert compare([], []) == Comparison([], dict.fromkeys(TABLES, 0))


def test_the_replayed_side_names_signals_by_user_and_key_and_drops_zero_balances() -> None:
    agent = AgentSetup(UUID(int=1), UUID(AGENT), "a", "w", None)
    store = MemoryStore()
    store.add_agent(agent, Decimal(0))
    signal = Signal(UUID(int=1), "T", "t", 3, "k1", AT, id=7)
    store.executions[(7, UUID(AGENT))] = ExecutionRow(7, UUID(AGENT), ExecutionStatus.SKIPPED,
                                                      None, "low balance")  # fmt: skip
    store.balances[("other wallet", SOL_MINT)] = Decimal(3)  # not a selected agent's
    rows = replayed_rows(store, [signal], [agent])
    assert rows == [
        LedgerRow(EXECUTIONS, (str(UUID(int=1)), "k1", AGENT),
                  {"status": "skipped", "error": "low balance", "transaction_id": None}),
    ]  # fmt: skip
