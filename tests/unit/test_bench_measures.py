"""The benchmark's own arithmetic: quantiles from the worker's histogram, the catch-up's
backlog and its no-look-ahead check, and the events relay's delay and cost (pure; the runs
themselves are in test_bench_smoke)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from benchmarks.catchup import Prices, _check_buys, make_backlog
from benchmarks.infra import Topics
from benchmarks.relay import DELAY, PUBLISHED, UNPUBLISHED_GAUGE, deliveries, ratio, within_target
from benchmarks.scrape import WAIT, Histogram, Scrape
from benchmarks.workload import Agent, User
from worker.domain.fills import token_price_sol
from worker.domain.models import SOL_MINT
from worker.metrics import Metrics
from worker.settings import Settings

INF = math.inf


def test_a_quantile_is_interpolated_within_its_bucket() -> None:
    h = Histogram((0.001, 0.002, 0.005, INF), (0, 10, 20, 20), 0.05)
    assert h.quantile(0.25) == pytest.approx(0.0015)
    assert h.quantile(0.5) == pytest.approx(0.002)
    assert h.quantile(0.99) == pytest.approx(0.002 + 0.003 * 9.8 / 10)
    assert h.mean == pytest.approx(0.0025)


def test_a_quantile_beyond_the_last_bound_is_that_bound_and_none_is_nan() -> None:
    h = Histogram((0.001, 0.01, INF), (5, 5, 10), 1.0)
    assert h.quantile(0.99) == 0.01
    assert math.isnan(Histogram((0.001, INF), (0, 0), 0.0).quantile(0.5))


def test_a_later_scrape_minus_an_earlier_one_is_what_was_observed_between() -> None:
    earlier = Histogram((0.001, 1.0, INF), (100, 100, 100), 0.05)
    later = Histogram((0.001, 1.0, INF), (100, 110, 110), 5.05)
    between = later.since(earlier)
    assert between.counts == (0.0, 10.0, 10.0)
    assert between.count == 10
    assert between.mean == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different buckets"):
        later.since(Histogram((0.5, INF), (1, 1), 0.1))


def test_the_workers_wait_histogram_is_read_from_its_exposition() -> None:
    metrics = Metrics()
    for seconds in (0.0004, 0.0012, 0.0013, 0.004, 0.04):
        metrics.signal_wait.observe(seconds)
    metrics.order_buffered.set(7)
    scrape = Scrape.parse(generate_latest(metrics.registry).decode())
    wait = scrape.histogram(WAIT)
    assert wait.count == 5
    assert 0.001 < wait.quantile(0.5) <= 0.002  # the third of five: 0.0013, in (1, 2] ms
    assert 0.03 < wait.quantile(0.99) <= 0.05
    assert scrape.total("signal_worker_order_buffered_records") == 7


def _users(n: int) -> list[User]:
    return [User(uuid.uuid4(), [Agent(uuid.uuid4(), "w")]) for _ in range(n)]


def test_the_backlog_is_in_event_time_order_with_every_time_in_its_payload() -> None:
    tokens = [f"Tok{k:037d}" for k in range(5)]
    backlog = make_backlog(_users(3), tokens, span_s=30, every_s=1.0, signals=20, seed=1)
    assert (backlog.ticks, backlog.sol_ticks, backlog.signals) == (150, 30, 20)
    times = [at_ms for _, _, _, at_ms in backlog.records]
    assert times == sorted(times)
    assert max(times) < datetime.now(UTC).timestamp() * 1000  # all in the past
    tick_times = [at_ms for is_price, _, _, at_ms in backlog.records if is_price]
    assert len(tick_times) == len(set(tick_times))  # no two ticks share a time
    for is_price, _, value, at_ms in backlog.records:
        payload = orjson.loads(value)
        stamped = payload["ts"] if is_price else payload["created_at"]
        assert datetime.fromisoformat(stamped).timestamp() * 1000 == at_ms
        if not is_price:
            assert "price_usd" not in payload  # the buy takes the price of the ticks


def test_a_price_is_that_of_the_last_tick_at_or_before_the_time() -> None:
    prices = Prices()
    prices.add("T", 1000, Decimal(1))
    prices.add("T", 2000, Decimal(2))
    assert prices.at("T", 999) is None
    assert prices.at("T", 1000) == Decimal(1)
    assert prices.at("T", 1999) == Decimal(1)
    assert prices.at("T", 2000) == Decimal(2)


def _buy(token: str, price_sol: Decimal, at_ms: int, *, is_dca: bool = False) -> dict[str, Any]:
    when = datetime.fromtimestamp(at_ms / 1000, UTC)
    return {
        "token": token,
        "price_sol": price_sol,
        "is_dca": is_dca,
        "transaction_time": when,
        "signal_time": None if is_dca else when,
    }


def test_a_buy_at_a_later_price_than_its_own_time_is_counted_as_look_ahead() -> None:
    prices = Prices()
    prices.add(SOL_MINT, 0, Decimal(150))
    prices.add("T", 1000, Decimal("0.5"))
    prices.add("T", 5000, Decimal("0.9"))
    then = token_price_sol(Decimal("0.5"), Decimal(150))
    later = token_price_sol(Decimal("0.9"), Decimal(150))
    rows: Any = [
        _buy("T", then, 2000),  # at its time's price
        _buy("T", later, 3000),  # the price of a tick after it: look-ahead
        _buy("T", later, 5000, is_dca=True),  # a DCA at its own tick
    ]
    check = _check_buys(rows, prices)
    assert (check.buys, check.buys_at_own_time) == (2, 1)
    assert (check.dca_buys, check.dca_at_own_time) == (1, 1)
    assert "buy of T at" in check.mismatch


def test_each_event_is_delayed_from_its_outbox_row_to_its_first_record() -> None:
    created = {"a": 100.0, "b": 100.5, "c": 101.0}
    records = [("a", 100_020), ("b", 100_540), ("a", 100_900), ("x", 101_000), (None, 101_000)]
    got = deliveries(records, created)
    assert got.delays_ms == pytest.approx([20.0, 40.0])  # the re-sent "a" is not a delay
    assert (got.events, got.records) == (3, 5)
    assert (got.duplicates, got.missing, got.unknown) == (1, 1, 2)


def test_the_relay_is_within_target_when_on_is_at_least_85_percent_of_off() -> None:
    assert ratio(850.0, 1000.0) == pytest.approx(0.85)
    assert within_target(850.0, 1000.0)
    assert not within_target(849.0, 1000.0)
    assert within_target(1200.0, 1000.0)
    assert math.isnan(ratio(5.0, 0.0))
    assert not within_target(5.0, 0.0)


def test_the_relays_delay_histogram_is_read_from_its_exposition() -> None:
    metrics = Metrics()
    for seconds in (0.02, 0.03, 0.04, 0.3, 3.0):
        metrics.event_delay.observe(seconds)
    metrics.events_published.labels("buy").inc(4)
    metrics.events_published.labels("executions_not_traded").inc()
    scrape = Scrape.parse(generate_latest(metrics.registry).decode())
    delay = scrape.histogram(DELAY)
    assert delay.count == 5
    assert 0.025 < delay.quantile(0.5) <= 0.05
    assert 2.5 < delay.quantile(0.99) <= 5
    assert scrape.total(PUBLISHED) == 5
    assert scrape.total(UNPUBLISHED_GAUGE) == 0


def test_the_benchmarks_events_topic_is_the_one_the_worker_names_by_default() -> None:
    topics = Topics("bench-x-a.signals", "bench-x-a.prices", "bench-x-a.dlq", "bench-x-a.group")
    default = Settings(signals_topic=topics.signals, prices_topic=topics.prices)
    assert topics.events == default.events_topic_name
