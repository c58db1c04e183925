"""`prices import` without services: the candle-to-ticks rule, the CSV and JSON lines
parsers (each line validated as a live tick is), and the first pass over a file."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from worker.commands.price_files import (
    Layout,
    Limits,
    format_of,
    layout_of,
    parse_line,
)
from worker.commands.prices import Tally, check_file, oldest_kept, open_layout
from worker.commands.prices_args import interval_arg, token_arg
from worker.domain.candles import Candle, candle_problem, candle_ticks
from worker.domain.models import SOL_MINT, PriceTick
from worker.errors import UsageError

TOKEN = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
OTHER = "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
LIMITS = Limits(NOW, timedelta(seconds=60), datetime(2026, 11, 7, tzinfo=UTC))
T = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
TICKS_CSV = Layout("csv", "ticks", columns=("token_address", "price_usd", "ts"))
CANDLES_JSONL = Layout("jsonl", "candles", interval=MINUTE)


def _ticks(*rows: tuple[str, int]) -> tuple[PriceTick, ...]:
    return tuple(PriceTick(TOKEN, Decimal(p), T + timedelta(seconds=s)) for p, s in rows)


# --- the rule --------------------------------------------------------------------------


def test_a_candle_is_open_then_low_then_high_then_close_at_quarters_of_its_interval() -> None:
    candle = Candle(TOKEN, T, MINUTE, Decimal(1), Decimal("1.5"), Decimal("0.5"), Decimal("1.2"))
    assert candle_ticks(candle) == _ticks(("1", 0), ("0.5", 15), ("1.5", 30), ("1.2", 45))
    assert candle.end == T + MINUTE


def test_a_flat_candle_gives_four_ticks_of_one_price_none_at_its_end() -> None:
    one = Decimal(1)
    ticks = candle_ticks(Candle(TOKEN, T, timedelta(hours=1), one, one, one, one))
    assert [t.price_usd for t in ticks] == [one] * 4
    assert [t.ts - T for t in ticks] == [timedelta(minutes=m) for m in (0, 15, 30, 45)]


def test_quarters_of_an_odd_number_of_seconds_are_exact_microseconds() -> None:
    ticks = candle_ticks(Candle(TOKEN, T, timedelta(seconds=7), *[Decimal(1)] * 4))
    assert [t.ts - T for t in ticks] == [timedelta(microseconds=m)
                                         for m in (0, 1_750_000, 3_500_000, 5_250_000)]  # fmt: skip


@pytest.mark.parametrize(
    ("o", "h", "low", "c", "problem"),
    [
        ("1", "2", "0.5", "1.5", None),
        ("1", "1", "1", "1", None),
        ("1", "2", "3", "1.5", "low 3 is above high 2"),
        ("0.4", "2", "0.5", "1.5", "open 0.4 is below low 0.5"),
        ("1", "2", "0.5", "2.5", "close 2.5 is above high 2"),
        ("3", "2", "0.5", "1", "open 3 is above high 2"),
        ("1", "2", "0.5", "0.1", "close 0.1 is below low 0.5"),
    ],
)
def test_a_candle_whose_low_or_high_does_not_bound_it_is_named(
    o: str, h: str, low: str, c: str, problem: str | None
) -> None:
    prices = [Decimal(v) for v in (o, h, low, c)]
    assert candle_problem(Candle(TOKEN, T, MINUTE, *prices)) == problem


# --- the parsers -----------------------------------------------------------------------


def _candle(**fields: object) -> bytes:
    line = {"token_address": TOKEN, "ts": "2026-12-01T10:00:00Z", "open": "1",
            "high": "1.5", "low": "0.5", "close": "1.2", **fields}  # fmt: skip
    return json.dumps(line).encode()


def test_a_csv_file_with_a_header_reads_ticks_and_ignores_other_columns() -> None:
    header = b"\xef\xbb\xbf Token_Address ,price_usd,ts,volume"  # a BOM, spaces, any case
    layout = layout_of("csv", header, interval=None, token=None)
    assert layout.kind == "ticks"
    parsed = parse_line(layout, 2, f'{TOKEN},"0.25",2026-12-01T10:00:00+01:00,99'.encode(), LIMITS)
    assert parsed.refused is None
    assert parsed.ticks == (PriceTick(TOKEN, Decimal("0.25"), T - timedelta(hours=1)),)


def test_a_csv_file_of_candles_takes_its_token_from_the_command_line() -> None:
    layout = layout_of("csv", b"ts,open,high,low,close", interval=MINUTE, token=SOL_MINT)
    parsed = parse_line(layout, 2, b"2026-12-01T10:00:00Z,100,101,99,100.5", LIMITS)
    assert [(t.token_address, t.price_usd) for t in parsed.ticks] == [
        (SOL_MINT, Decimal(p)) for p in ("100", "99", "101", "100.5")
    ]


def test_jsonl_candles_become_their_four_ticks() -> None:
    layout = layout_of("jsonl", _candle(), interval=MINUTE, token=None)
    assert layout == CANDLES_JSONL
    parsed = parse_line(layout, 1, _candle(), LIMITS)
    assert parsed.ticks == _ticks(("1", 0), ("0.5", 15), ("1.5", 30), ("1.2", 45))


@pytest.mark.parametrize(
    ("name", "first", "found"),
    [
        ("p.csv", b"{", "csv"),
        ("P.JSONL", b"ts,open", "jsonl"),
        ("p.ndjson", b"", "jsonl"),
        ("p.json", b"", "jsonl"),
        ("prices.txt", b'  {"ts": 1}', "jsonl"),
        ("prices", b"token_address,price_usd,ts", "csv"),
    ],
)
def test_the_format_comes_from_the_name_else_the_first_line(
    name: str, first: bytes, found: str
) -> None:
    assert format_of(name, first) == found


@pytest.mark.parametrize(
    ("fmt", "first", "interval", "token", "error"),
    [
        ("csv", b"token_address,ts", None, None, "the CSV header has no column price_usd"),
        ("csv", b"ts,price_usd", None, None, "the CSV header has no column token_address"),
        ("csv", b"ts,open,high,close", MINUTE, TOKEN, "the CSV header has no column low"),
        ("csv", b"ts,ts,price_usd", None, TOKEN, "the CSV header names a column twice"),
        ("csv", b"ts,open,high,low,close", None, TOKEN, "a file of candles needs --interval"),
        ("jsonl", b'{"open": "1"}', None, None, "a file of candles needs --interval"),
        ("jsonl", b"[1]", None, None, "the first line is not a JSON object"),
        ("jsonl", b'{"a": 1, "a": 2}', None, None, "the first line is not a JSON object"),
    ],
)
def test_a_file_that_cannot_be_read_at_all_is_one_usage_error(
    fmt: str, first: bytes, interval: timedelta | None, token: str | None, error: str
) -> None:
    with pytest.raises(UsageError, match=error):
        layout_of(fmt, first, interval=interval, token=token)  # type: ignore[arg-type]


def _tick_line(
    price: str = '"0.5"', ts: str = '"2026-12-01T10:00:00Z"', token: str = TOKEN
) -> bytes:
    return f'{{"token_address": "{token}", "price_usd": {price}, "ts": {ts}}}'.encode()


JSONL_TICKS = Layout("jsonl", "ticks")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_tick_line(price="-1"), "price_usd: must be greater than 0, not -1"),
        (_tick_line(price='"-0.5"'), "price_usd: must be greater than 0"),
        (_tick_line(price="0"), "price_usd: must be greater than 0"),
        (_tick_line(price="NaN"), "NaN"),
        (_tick_line(price='"NaN"'), "must be a decimal written as a JSON number"),
        (_tick_line(price="1e400"), "price_usd: must be less than 1000000000000"),
        (_tick_line(price='"1e400"'), "price_usd: must be less than 1000000000000"),
        (_tick_line(price='"+1"'), "must be a decimal written as a JSON number"),
        (_tick_line(price="1e-19"), "rounds to 0"),
        (_tick_line(price="true"), "price_usd: must be a decimal"),
        (_tick_line(ts="1764583200"), "ts: must be an RFC 3339 timestamp string"),
        (_tick_line(ts='"2026-12-01T10:00:00"'), "ts: must be an RFC 3339 timestamp with seconds"),
        (_tick_line(ts='"2026-12-01"'), "ts: must be an RFC 3339 timestamp"),
        (_tick_line(ts='"2026-13-01T10:00:00Z"'), "ts: "),
        (_tick_line(ts='"0001-01-01T00:00:00Z"'), "ts: must lie between 1970-01-01"),
        (_tick_line(ts="null"), "ts: Field required"),
        (_tick_line(ts='"2026-12-07T12:01:01Z"'), "is more than 60s ahead of the database's"),
        (_tick_line(ts='"2026-11-06T23:59:59Z"'), "is before 2026-11-07T00:00:00+00:00, the "
                                                   "oldest time the price history keeps"),
        (_tick_line(token="not-a-mint"), "token_address: must be a Solana mint address"),
        (b'{"token_address": "' + TOKEN.encode() + b'", "ts": "2026-12-01T10:00:00Z"}',
         "price_usd: Field required"),
        (_tick_line()[:-1] + b', "price_usd": "2"}', "the key 'price_usd' appears twice"),
        (b"[]", "not a JSON object"),
        (b"{bad json", "not JSON: Expecting property name"),
        (b"\xff\xfe", "not UTF-8"),
        (None, "longer than 1,048,576 bytes"),
    ],
)  # fmt: skip
def test_a_hostile_tick_line_is_refused_with_its_reason(raw: bytes | None, reason: str) -> None:
    parsed = parse_line(JSONL_TICKS, 7, raw, LIMITS)
    assert parsed.ticks == ()
    assert parsed.line == 7
    assert parsed.refused is not None
    assert reason.lower() in parsed.refused.lower(), parsed.refused


def test_the_edges_of_the_clock_are_accepted() -> None:
    for ts in ('"2026-12-07T12:01:00Z"', '"2026-11-07T00:00:00Z"'):
        assert parse_line(JSONL_TICKS, 1, _tick_line(ts=ts), LIMITS).refused is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_candle(low="1.6"), "not a candle: low 1.6 is above high 1.5"),
        (_candle(open="2", high="2", low="1.3"), "not a candle: close 1.2 is below low 1.3"),
        (_candle(close="2"), "not a candle: close 2 is above high 1.5"),
        (_candle(high="-1"), "high: must be greater than 0"),
        (_candle(open="NaN"), "open: must be a decimal written as a JSON number"),
        (_candle(close="1e400"), "close: must be less than"),
        (_candle(ts="2026-12-07T11:59:30Z"), "the candle has not closed yet: it ends at "
                                             "2026-12-07T12:00:30+00:00"),
        (_candle(ts=1764583200), "ts: must be an RFC 3339 timestamp string"),
        (_candle(token_address=OTHER), None),
        (json.dumps({"token_address": TOKEN, "ts": "2026-12-01T10:00:00Z",
                     "price_usd": "1"}).encode(), "open: Field required (the file holds candles)"),
    ],
)  # fmt: skip
def test_a_hostile_candle_line_is_refused_with_its_reason(raw: bytes, reason: str | None) -> None:
    parsed = parse_line(CANDLES_JSONL, 3, raw, LIMITS)
    if reason is None:
        assert parsed.refused is None
        assert {t.token_address for t in parsed.ticks} == {OTHER}
    else:
        assert parsed.refused is not None
        assert reason in parsed.refused, parsed.refused


def test_a_candle_that_would_end_after_the_largest_time_is_refused_not_a_crash() -> None:
    week = Layout("jsonl", "candles", interval=timedelta(days=7))
    far = Limits(datetime(9999, 12, 30, tzinfo=UTC), timedelta(seconds=60), LIMITS.oldest)
    parsed = parse_line(week, 3, _candle(ts="9999-12-29T00:00:00Z"), far)
    assert parsed.refused == (
        "the candle at 9999-12-29T00:00:00+00:00 ends after the largest time there is"
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (f"{TOKEN},0.5".encode(), "2 cells; the header has 3"),
        (f"{TOKEN},0.5,2026-12-01T10:00:00Z,x".encode(), "4 cells; the header has 3"),
        (f"{TOKEN},,2026-12-01T10:00:00Z".encode(), "price_usd: Field required"),
        (f'{TOKEN},"0.5,2026-12-01T10:00:00Z'.encode(), "the line is not CSV"),
        (f"{TOKEN},NaN,2026-12-01T10:00:00Z".encode(), "must be a decimal written as a JSON"),
        (f"{TOKEN},1e400,2026-12-01T10:00:00Z".encode(), "must be less than 1000000000000"),
        (f"{TOKEN},-3,2026-12-01T10:00:00Z".encode(), "must be greater than 0"),
        (f"{TOKEN}, 0.5,2026-12-01T10:00:00Z".encode(), "must be a decimal written as a JSON"),
        (f"{TOKEN},0.5,1764583200".encode(), "must be an RFC 3339 timestamp with seconds"),
        (f"{TOKEN},0.5,2026-12-01 10:00".encode(), "must be an RFC 3339 timestamp with seconds"),
        (f"{TOKEN},0.5,2026-12-01T10:00:00Z\x00".encode(), "the line holds a NUL character"),
    ],
)
def test_a_hostile_csv_line_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    parsed = parse_line(TICKS_CSV, 4, raw, LIMITS)
    assert parsed.refused is not None
    assert reason in parsed.refused, parsed.refused


def test_a_line_naming_another_token_than_token_is_refused() -> None:
    layout = Layout("jsonl", "ticks", token=TOKEN)
    assert parse_line(layout, 1, _tick_line(), LIMITS).refused is None
    without = b'{"price_usd": "1", "ts": "2026-12-01T10:00:00Z"}'
    assert parse_line(layout, 1, without, LIMITS).ticks[0].token_address == TOKEN
    other = parse_line(layout, 1, _tick_line(token=OTHER), LIMITS)
    assert other.refused == f"token_address '{OTHER}' is not --token {TOKEN}"


# --- the first pass over a file -------------------------------------------------------


def _args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"format": None, "interval": None, "token": None, **given})


def test_the_first_pass_counts_lines_names_bad_ones_and_reports_progress(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    rows = [f"{TOKEN},{p},2026-12-01T10:00:0{i}Z" for i, p in enumerate(["1", "-1", "2", "x", "3"])]
    path.write_text("token_address,price_usd,ts\n\n" + "\n".join(rows) + "\n")
    layout = open_layout(path, _args())
    done: list[int] = []
    tally = check_file(path, layout, LIMITS, progress=done.append, every=2)
    assert tally.lines == 5
    assert done == [2, 4]
    assert sorted(tally.refused) == [4, 6]  # line numbers in the file (header 1, blank 2)
    assert "must be greater than 0" in tally.refused[4]


def test_a_line_too_long_is_refused_and_the_next_one_read(tmp_path: Path) -> None:
    path = tmp_path / "ticks.jsonl"
    path.write_bytes(
        _tick_line() + b"\n" + b"x" * 2_000_000 + b"\n" + _tick_line(price="2") + b"\n"
    )
    tally = check_file(path, open_layout(path, _args()), LIMITS)
    assert tally.lines == 3
    assert tally.refused == {2: "longer than 1,048,576 bytes"}


def test_an_empty_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("\n \n")
    with pytest.raises(UsageError, match="no line to import"):
        open_layout(path, _args())


def test_the_summary_names_every_count() -> None:
    tally = Tally(lines=3, imported=8, already=4, refused={2: "x"})
    layout = Layout("csv", "candles", interval=timedelta(hours=1))
    assert tally.summary("c.csv", layout, committed=True) == (
        "prices import: c.csv: 3 lines of candles of 1h: 8 ticks imported, 4 skipped as "
        "already there, 1 line refused"
    )
    refused = tally.summary("c.csv", layout, committed=False)
    assert refused.startswith("prices import: c.csv: 3 lines of candles of 1h: 0 ticks "
                              "imported, 0 skipped as already there, 1 line refused; "
                              "nothing imported")  # fmt: skip


def test_the_oldest_time_kept_is_the_upkeeps_cutoff() -> None:
    assert oldest_kept(NOW.date(), 30) == datetime(2026, 11, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "length"),
    [("60", 60), ("30s", 30), ("1m", 60), ("15m", 900), ("1h", 3600), ("4h", 14400),
     ("1d", 86400), ("7d", 604800)],
)  # fmt: skip
def test_candle_lengths(text: str, length: int) -> None:
    assert interval_arg(text) == timedelta(seconds=length)


@pytest.mark.parametrize("text", ["0", "0m", "-1m", "1.5h", "1w", "8d", "m", "", "1 h"])
def test_bad_candle_lengths_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        interval_arg(text)


def test_sol_names_the_sol_mint() -> None:
    assert token_arg(" sol ") == SOL_MINT
    assert token_arg(TOKEN) == TOKEN
