"""Bulk statements declared once: the SQL's arrays and the arguments come from one list."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from operator import itemgetter

import pytest

from worker.db import offsets, positions, signals, trades
from worker.db.bulk import Bulk, Column


@dataclass
class _Row:
    id: int
    price: Decimal
    inner: _Inner


@dataclass
class _Inner:
    amount: Decimal


ROWS: Bulk[_Row] = Bulk(
    "t",
    [
        Column("id", "int", "id"),
        Column("price", "numeric", "price"),
        Column("amount", "numeric", "inner.amount"),
        Column("double", "numeric", lambda r: r.price * 2),
    ],
    scalars=["now", "group"],
)


def test_the_sql_and_the_arguments_follow_the_declaration() -> None:
    assert ROWS.rows() == (
        "unnest($1::int[], $2::text::numeric[], $3::text::numeric[], $4::text::numeric[]) "
        "AS t(id, price, amount, double)"
    )
    assert ROWS.sql("SELECT {group}, t.id, {now} FROM {rows}") == (
        f"SELECT $6, t.id, $5 FROM {ROWS.rows()}"
    )
    rows = [_Row(1, Decimal("0.5"), _Inner(Decimal(7))), _Row(2, Decimal(3), _Inner(Decimal(8)))]
    # Numbers travel as one array literal of their exact text (cheaper than asyncpg's
    # binary numeric).
    assert ROWS.args(rows, now="NOW", group="G") == [
        [1, 2],
        "{0.5,3}",
        "{7,8}",
        "{1.0,6}",
        "NOW",
        "G",
    ]


def test_scalars_must_be_given_exactly() -> None:
    with pytest.raises(ValueError, match="declared"):
        ROWS.args([], now="NOW")
    with pytest.raises(ValueError, match="declared"):
        ROWS.args([], now="NOW", group="G", extra=1)
    with pytest.raises(ValueError, match="duplicate"):
        Bulk("t", [Column("a", "int", itemgetter(0))], scalars=["a"])


@pytest.mark.parametrize(
    "bulk",
    [
        trades.SWAPS, trades.DEBITS, trades.CREDITS, trades.POSITIONS, trades.RULE_SETS,
        positions.TRAILS, positions.WRITES, positions.EXITS, signals.SIGNALS, signals.KEYS,
        signals.EXECUTIONS, offsets.OFFSETS,
    ],
)  # fmt: skip
def test_every_declared_column_is_used_by_its_statement(bulk: Bulk[object]) -> None:
    """A column declared but not used (or misnamed) is an argument PostgreSQL never reads."""
    statements = [
        s
        for module in (trades, positions, signals, offsets)
        for s in vars(module).values()
        if isinstance(s, str) and bulk.rows() in s
    ]
    assert statements, "no statement uses this declaration"
    for statement in statements:
        body = statement.replace(bulk.rows(), "")
        for column in bulk.columns:
            assert f"{bulk.alias}.{column.name}" in body, column.name
        for scalar in bulk.scalars:
            assert bulk.placeholder(scalar) in body, scalar


def test_the_trail_read_lists_the_trail_row_fields_in_order() -> None:
    # `PositionQueries.trail_rows` builds TrailRow positionally from this SELECT's columns.
    import dataclasses
    import re

    from worker.domain.records import TrailRow

    select = positions.SELECT_TRAIL_ROWS.split("FROM", 1)[0].replace("SELECT", "", 1)
    columns = [re.split(r"\s+AS\s+|\.", c.strip())[-1] for c in select.split(",")]
    assert columns == [f.name for f in dataclasses.fields(TrailRow)]


@pytest.mark.parametrize("value", [1.5, True, Decimal("NaN"), Decimal("Infinity"), "1"])
def test_a_numeric_column_takes_only_finite_decimals_and_ints(value: object) -> None:
    """A float would be stored approximately, a bool as a word, NaN where no price is: a
    bug upstream, said at once."""
    column: Column[object] = Column("v", "numeric", lambda r: r)
    assert column.values([Decimal("2.50"), 3, None]) == "{2.50,3,NULL}"
    with pytest.raises(TypeError, match="finite Decimal"):
        column.values([value])
