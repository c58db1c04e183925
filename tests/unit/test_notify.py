"""`signal-worker notify`'s pure parts (worker.domain.notify) and its poster's retry policy
against an in-process HTTP transport (no network, no clock: the waits are recorded)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from worker.domain.notify import (
    Names,
    TokenBucket,
    backoff_s,
    detect_format,
    event_text,
    outcome,
    parse_webhook,
    redacted,
    retry_after_s,
    webhook_id,
)
from worker.pipeline.notify import Poster, decode, is_chosen

SLACK = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
DISCORD = "https://discord.com/api/webhooks/123/tokenSECRET"
TELEGRAM = "https://api.telegram.org/bot123456:SECRETabc/sendMessage?chat_id=-1001"

# --- the token bucket ------------------------------------------------------------------------


def test_the_bucket_allows_a_burst_then_one_post_per_interval() -> None:
    bucket = TokenBucket(2.0, now=0.0)  # burst 2
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token by now
    assert bucket.take(0.5) == 0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_the_bucket_never_gives_more_than_burst_plus_rate_times_time() -> None:
    rate = 3.0
    bucket = TokenBucket(rate, now=0.0)
    taken = 0
    for step in range(1, 1001):  # a caller asking every 10 ms for 10 s
        now = step / 100
        while bucket.take(now) == 0:
            taken += 1
        assert taken <= bucket.burst + rate * now
    assert taken >= rate * 10 - 1  # and it does give what the rate allows


def test_a_slow_rate_has_a_burst_of_one() -> None:
    bucket = TokenBucket(0.5, now=10.0)
    assert bucket.take(10.0) == 0
    assert bucket.take(10.0) == pytest.approx(2.0)
    assert bucket.take(11.0) == pytest.approx(1.0)
    assert bucket.take(12.0) == 0


def test_a_bucket_without_a_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        TokenBucket(0)


# --- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "action", "wait"),
    [
        (200, None, "done", 0.0),
        (204, None, "done", 0.0),
        (500, None, "retry", 0.5),
        (503, 7.0, "retry", 7.0),
        (502, None, "retry", 0.5),
        (429, None, "retry", 0.5),
        (429, 0.2, "retry", 0.2),  # Retry-After honoured, even when shorter than the backoff
        (408, None, "retry", 0.5),
        (400, None, "refused", 0.0),
        (401, None, "refused", 0.0),
        (404, None, "refused", 0.0),
        (301, None, "refused", 0.0),
    ],
)
def test_what_an_answer_means(
    status: int, retry_after: float | None, action: str, wait: float
) -> None:
    result = outcome(status, 1, retry_after, "why")
    assert result.action == action
    assert result.wait_s == pytest.approx(wait)
    if action != "done":
        assert result.reason == f"HTTP {status}: why"


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [backoff_s(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 32, 60]
    assert backoff_s(10_000) == 60


def test_retry_after_in_seconds_as_a_date_or_from_telegram() -> None:
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("3", None, now) == 3
    assert retry_after_s("1.5", None, now) == 1.5
    assert retry_after_s("Thu, 26 Nov 2026 12:00:30 GMT", None, now) == 30
    assert retry_after_s("Thu, 26 Nov 2026 11:00:00 GMT", None, now) == 0  # past: now
    assert retry_after_s("99999999", None, now) == 3600  # bounded
    assert retry_after_s("soon", None, now) is None
    assert retry_after_s(None, {"ok": False, "parameters": {"retry_after": 4}}, now) == 4
    assert retry_after_s(None, {"ok": False}, now) is None


# --- webhooks -------------------------------------------------------------------------------


def test_the_format_comes_from_the_url() -> None:
    assert detect_format(SLACK) == "slack"
    assert detect_format(DISCORD) == "discord"
    assert detect_format("https://discordapp.com/api/webhooks/1/x") == "discord"
    assert detect_format(TELEGRAM) == "telegram"
    assert detect_format("http://127.0.0.1:9000/hook") == "slack"


def test_each_format_has_its_body() -> None:
    assert parse_webhook(SLACK).body("hi") == {"text": "hi"}
    assert parse_webhook(DISCORD).body("hi") == {"content": "hi"}
    assert parse_webhook(TELEGRAM).body("hi") == {"chat_id": "-1001", "text": "hi"}
    assert parse_webhook("http://127.0.0.1:1/x", "discord").body("hi") == {"content": "hi"}
    assert len(parse_webhook(SLACK).body("x" * 5000)["text"]) == 2000


def test_a_bad_webhook_url_is_one_line_without_its_secret() -> None:
    with pytest.raises(ValueError, match="http") as caught:
        parse_webhook("ftp://example.com/SECRET")
    assert "SECRET" not in str(caught.value)
    with pytest.raises(ValueError, match="chat_id"):
        parse_webhook("https://api.telegram.org/bot1:SECRET/sendMessage")


def test_the_webhook_id_hides_secrets_and_keeps_destinations_apart() -> None:
    assert len(webhook_id(SLACK)) == 32
    assert "SECRET" not in webhook_id(SLACK)
    assert webhook_id(SLACK) != webhook_id(SLACK.replace("XXXX", "YYYY"))
    # A rotated Telegram token is the same bot and chat: the same progress.
    assert webhook_id(TELEGRAM) == webhook_id(TELEGRAM.replace("SECRETabc", "NEWtoken"))
    assert webhook_id(TELEGRAM) != webhook_id(TELEGRAM.replace("-1001", "-1002"))
    # Query order and a password in the URL do not make another webhook.
    assert webhook_id("http://h/x?a=1&b=2") == webhook_id("http://u:pw@H/x?b=2&a=1")
    assert redacted(SLACK) == "https://hooks.slack.com/…"


# --- the text of events ------------------------------------------------------------------------


def test_one_readable_line_per_event() -> None:
    buy = {
        "type": "buy",
        "agent_id": "0b5c0d9e-0000-4000-8000-000000000001",
        "token_symbol": "BONK",
        "sol": Decimal("1.50000000"),
        "price_sol": Decimal("0.000012300000000000"),
        "signal_id": 7,
    }
    assert (
        event_text(buy, Names("alpha", "s1"))
        == "alpha bought 1.5 SOL of BONK at 0.0000123 SOL (signal s1)"
    )
    assert event_text(buy) == "0b5c…0001 bought 1.5 SOL of BONK at 0.0000123 SOL (signal 7)"
    closed = {
        "type": "position_closed",
        "token_symbol": "BONK",
        "close_reason": "stop_loss",
        "profit_loss_sol": Decimal("0.12"),
        "change_percent": Decimal("8.1234"),
    }
    assert event_text(closed, Names("beta")) == "beta closed BONK: stop_loss, P/L +0.12 SOL (+8.1%)"
    loss = {**closed, "profit_loss_sol": Decimal("-0.5"), "change_percent": Decimal("-12.06")}
    assert event_text(loss, Names("beta")) == "beta closed BONK: stop_loss, P/L -0.5 SOL (-12.1%)"
    tp = {
        "type": "take_profit_sale",
        "token_address": "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr",
        "token_amount": Decimal(100),
        "sol": Decimal("0.6"),
        "price_sol": Decimal("0.006"),
    }
    assert (
        event_text(tp, Names("a"))
        == "a took profit on 7GCi…W2hr: sold 100 for 0.6 SOL at 0.006 SOL"
    )
    not_traded = {
        "type": "executions_not_traded",
        "token_symbol": "X",
        "signal_key": "k",
        "executions": [
            {"agent_id": "a1", "status": "failed", "reason": "no SOL"},
            {"agent_id": "a2", "status": "skipped", "reason": "minScore"},
            {"agent_id": "a3", "status": "skipped", "reason": "minScore"},
        ],
    }
    assert (
        event_text(not_traded, Names("a"))
        == "2 agents skipped, 1 agent failed to buy X (signal k): no SOL (and 2 more)"
    )
    refused = {"type": "command_result", "command": "withdraw", "status": "refused",
               "reason": "below zero", "idempotency_key": "cli-1"}  # fmt: skip
    assert event_text(refused, Names("a")) == "withdraw for a refused (key cli-1): below zero"
    dead = {"type": "dead_letter", "source_record": "t:0:5", "reason": "not JSON"}
    assert event_text(dead) == "dead-lettered t:0:5: not JSON"


def test_events_are_read_and_chosen() -> None:
    user = "0b5c0d9e-0000-4000-8000-000000000009"
    raw = json.dumps({"event_id": "6f1e6a3c-7f2a-4b8e-9c1d-2e3f4a5b6c7d", "type": "buy",
                      "user_id": user, "sol": 1.25}).encode()  # fmt: skip
    event = decode(raw)
    assert event is not None and event["sol"] == Decimal("1.25")
    assert is_chosen(event, {"buy"}, set())
    assert not is_chosen(event, {"dead_letter"}, set())
    from uuid import UUID, uuid4

    assert is_chosen(event, {"buy"}, {UUID(user)})
    assert not is_chosen(event, {"buy"}, {uuid4()})
    assert decode(b"not json") is None
    assert decode(b'{"type": "buy"}') is None  # no event id: cannot be posted once
    assert decode(None) is None
    # Anyone may write to the topic: nothing a record holds stops notify.
    assert decode(b"[" * 100_000 + b"]" * 100_000) is None
    assert decode(b"\xff\xfe") is None
    assert (
        decode(b'{"type": "buy", "type": "x", "event_id": "0b5c0d9e-0000-4000-8000-000000000009"}')
        is None
    )


# --- the poster -------------------------------------------------------------------------------


class Recorder:
    """A fake clock and sleep: each wait advances the clock and is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, stop: asyncio.Event, seconds: float) -> None:
        del stop
        self.waits.append(round(seconds, 3))
        self.now += seconds


def _poster(
    answers: list[httpx.Response | Exception], rate: float = 100.0
) -> tuple[Poster, Recorder, list[dict[str, str]]]:
    bodies: list[dict[str, str]] = []
    script = iter(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        answer = next(script)
        if isinstance(answer, Exception):
            raise answer
        return answer

    recorder = Recorder()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    poster = Poster(
        client,
        parse_webhook("http://hook.test/x"),
        TokenBucket(rate, now=0.0),
        asyncio.Event(),
        clock=recorder.clock,
        sleep=recorder.sleep,
    )
    return poster, recorder, bodies


async def test_the_poster_retries_5xx_429_and_lost_connections_then_posts() -> None:
    poster, recorder, bodies = _poster(
        [
            httpx.Response(500, text="oops"),
            httpx.ConnectError("refused"),
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503),
            httpx.Response(200, text="ok"),
        ]
    )
    result = await poster.post({"text": "hi"})
    assert result is not None and result.action == "done"
    assert recorder.waits == [0.5, 1.0, 7.0, 4.0]  # backoff 0.5, 1; Retry-After 7; backoff 4
    assert bodies == [{"text": "hi"}] * 5


async def test_the_poster_gives_up_on_a_4xx_with_the_reason() -> None:
    poster, recorder, _ = _poster(
        [httpx.Response(400, json={"ok": False, "description": "Bad Request: chat not found"})]
    )
    result = await poster.post({"text": "hi"})
    assert result is not None and result.action == "refused"
    assert result.reason == "HTTP 400: Bad Request: chat not found"
    assert recorder.waits == []


async def test_the_poster_waits_for_the_token_bucket() -> None:
    poster, recorder, bodies = _poster([httpx.Response(200)] * 4, rate=0.5)
    for _ in range(4):
        assert (await poster.post({"text": "x"})) is not None
    assert len(bodies) == 4
    assert recorder.waits == [2.0, 2.0, 2.0]  # one token at once, then one each 2 s


async def test_a_stop_during_a_retry_wait_posts_nothing_more() -> None:
    stop = asyncio.Event()
    calls = 0

    def handle(_request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500)

    async def sleep(_event: asyncio.Event, _seconds: float) -> None:
        stop.set()

    poster = Poster(
        httpx.AsyncClient(transport=httpx.MockTransport(handle)),
        parse_webhook("http://hook.test/x"),
        TokenBucket(10, now=0.0),
        stop,
        clock=lambda: 0.0,
        sleep=sleep,
    )
    assert await poster.post({"text": "x"}) is None
    assert calls == 1


# --- the setting -------------------------------------------------------------------------------


def test_a_bad_notify_webhook_url_setting_stops_start_up_in_one_line() -> None:
    from pydantic import ValidationError

    from worker.settings import Settings, describe_error

    with pytest.raises(ValidationError) as caught:
        Settings(notify_webhook_url="hooks.slack.com/services/SECRET")  # type: ignore[arg-type]  # a str, as from the environment
    line = describe_error(caught.value)
    assert line == "invalid setting NOTIFY_WEBHOOK_URL: must be an http(s):// URL with a host"
    assert Settings(notify_webhook_url="").notify_webhook_url is None  # type: ignore[arg-type]  # a str, as from the environment
    url = Settings(notify_webhook_url=SLACK).notify_webhook_url  # type: ignore[arg-type]  # a str, as from the environment
    assert url is not None and url.get_secret_value() == SLACK
    assert "SECRET" not in repr(Settings(notify_webhook_url=SLACK))  # type: ignore[arg-type]  # a str, as from the environment


def test_the_event_types_notify_knows_are_those_the_worker_publishes() -> None:
    """`worker.domain.notify` cannot import the wire models (the domain is pure): its list is
    held to them here."""
    from typing import get_args

    from worker.domain.notify import EVENT_TYPES
    from worker.messages import EventV1

    published = {
        kind
        for model in get_args(get_args(EventV1)[0])
        for kind in get_args(model.model_fields["type"].annotation)
    }
    assert set(EVENT_TYPES) == published
