"""Bulk statements declared once: each column's name, PostgreSQL type and how to read it from
a row, from which both the `unnest(...) AS t(...)` text and the argument arrays come.

A set-based write passes one array per column; written by hand, the SQL's `$n::type[]` list
and the Python argument list must agree by position, and swapping two `numeric[]` columns
would pass silently. Here a statement declares its columns (and its named scalars, such as
`now`) once, and both sides are derived from that declaration:

    SWAPS = Bulk("t", [Column("id", "uuid", "id"), ...], scalars=["now"])
    INSERT = SWAPS.sql("INSERT INTO x (id, at) SELECT t.id, {now} FROM {rows}")
    await conn.execute(INSERT, *SWAPS.args(rows, now=now))

The SQL is assembled once, at import, from these constant declarations: no value ever goes
into the text; values travel as `$n` parameters only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from operator import attrgetter
from typing import Generic, TypeVar

T = TypeVar("T")


class Column(Generic[T]):
    """One column of a bulk statement: its name in `t(...)`, its type, and its value in a
    row: an attribute path (`"state.purchase_price"`, read with `operator.attrgetter`, fast)
    or a function of the row."""

    __slots__ = ("get", "name", "pg_type")

    def __init__(self, name: str, pg_type: str, get: str | Callable[[T], object]) -> None:
        self.name = name
        self.pg_type = pg_type
        self.get: Callable[[T], object] = attrgetter(get) if isinstance(get, str) else get

    def placeholder(self, n: int) -> str:
        """`$n` as this column's array (numbers travel as one array literal, see `NUMERIC`)."""
        if self.pg_type == NUMERIC:
            return f"${n}::text::numeric[]"
        return f"${n}::{self.pg_type}[]"

    def values(self, rows: Sequence[T]) -> object:
        """This column's argument: the list of its values, or for `numeric` their array
        literal."""
        if self.pg_type == NUMERIC:
            return "{" + ",".join(map(_number_text, map(self.get, rows))) + "}"
        return list(map(self.get, rows))


# A `numeric` column's values travel as one array literal of their exact text,
# `{0.5,1E-8,NULL}`, read by PostgreSQL: asyncpg's binary encoding of a Decimal costs about
# 1.4 us of the worker's CPU, the literal about 0.13 (measured on 50,000 values); at fan-out
# 100 a buy writes about fifteen numbers. Only finite Decimals and ints are taken: `str` of
# one keeps every digit, and its characters (digits, sign, point, exponent) need no quoting
# in a literal, so the stored values are exactly the ones given. Anything else (a float, a
# bool, NaN) is a bug upstream and raises here rather than being stored approximately.
NUMERIC = "numeric"


def _number_text(value: object) -> str:
    if value is None:
        return "NULL"
    if type(value) is Decimal:
        if value.is_finite():
            return str(value)
    elif type(value) is int:
        return str(value)
    msg = f"a numeric column takes a finite Decimal or an int, not {value!r}"
    raise TypeError(msg)


class Bulk(Generic[T]):
    """The columns (then the named scalars) of one set-based statement, in parameter order."""

    def __init__(
        self, alias: str, columns: Sequence[Column[T]], scalars: Sequence[str] = ()
    ) -> None:
        names = [c.name for c in columns] + list(scalars)
        if len(set(names)) != len(names):
            msg = f"duplicate column or scalar names in {names}"
            raise ValueError(msg)
        self.alias = alias
        self.columns = tuple(columns)
        self.scalars = tuple(scalars)

    def rows(self) -> str:
        """`unnest($1::type[], ...) AS alias(name, ...)`."""
        arrays = ", ".join(c.placeholder(i) for i, c in enumerate(self.columns, start=1))
        names = ", ".join(c.name for c in self.columns)
        return f"unnest({arrays}) AS {self.alias}({names})"

    def placeholder(self, scalar: str) -> str:
        """The `$n` of a named scalar (after every column's array)."""
        return f"${len(self.columns) + 1 + self.scalars.index(scalar)}"

    def sql(self, template: str) -> str:
        """`template` with `{rows}` and every `{scalar}` filled in."""
        return template.format(rows=self.rows(), **{s: self.placeholder(s) for s in self.scalars})

    def args(self, rows: Sequence[T], **scalars: object) -> list[object]:
        """One array per column, in order, then the scalars by name."""
        if set(scalars) != set(self.scalars):
            msg = f"scalars {sorted(scalars)} given, {sorted(self.scalars)} declared"
            raise ValueError(msg)
        arrays: list[object] = [c.values(rows) for c in self.columns]
        return arrays + [scalars[name] for name in self.scalars]
