"""`signal-worker notify`'s pure parts: webhooks (format, id, body), event text, the token
bucket and the retry policy. No I/O and no clock: the caller passes the time in.

Choices:
- **Format from the URL**, unless `--format` says: `hooks.slack.com` is Slack (`{"text"}`),
  `discord.com`/`discordapp.com` `/api/webhooks/` is Discord (`{"content"}`),
  `api.telegram.org/bot<token>/sendMessage` is Telegram (JSON `chat_id` and `text`; the chat
  id from the URL's `chat_id` query parameter). Any other URL gets Slack's `{"text"}` body,
  the one most chat tools' incoming webhooks accept (Mattermost, Rocket.Chat, Google Chat).
- **Webhook id**: 16 bytes of SHA-256 (hex) over the URL's scheme, host, port, path and
  sorted query, without a user name or password in it and, for Telegram, without the
  token's secret half (after the `:`): the bot and the chat are the destination, so a
  rotated token keeps its progress. Nothing secret is stored or logged in clear; logs show
  `redacted(url)` (scheme and host) and the id.
- **Retries**: 2xx is done; 429, 408, 5xx and connection errors are retried forever with
  exponential backoff (0.5 s doubling to 60 s), a 429's Retry-After (seconds or an HTTP
  date; Telegram's `parameters.retry_after`) waited instead when it says longer; any other
  status (3xx, 4xx) is the event's permanent failure: logged with the reason, and the next
  event goes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

WebhookFormat = Literal["slack", "discord", "telegram"]
FORMATS: tuple[WebhookFormat, ...] = ("slack", "discord", "telegram")

EVENT_TYPES = (
    "buy",
    "dca_buy",
    "take_profit_sale",
    "position_closed",
    "executions_not_traded",
    "command_result",
    "dead_letter",
)
DEFAULT_EVENTS = (
    "buy",
    "take_profit_sale",
    "position_closed",
    "command_result",
    "dead_letter",
)

# Discord refuses a `content` over 2000 characters, Telegram a text over 4096; Slack takes
# more. One line per event stays far below; a longer one is cut rather than refused.
MAX_TEXT = 2000
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 60.0
RETRY_AFTER_MAX_S = 3600.0


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where to post and how: the URL as given, its body format and (Telegram) chat id."""

    url: str
    format: WebhookFormat
    chat_id: str | None = None

    @property
    def id(self) -> str:
        """The id progress is stored under (see the module's docstring)."""
        return webhook_id(self.url)

    def body(self, text: str) -> dict[str, str]:
        """The JSON body that posts `text` (cut to MAX_TEXT characters)."""
        if len(text) > MAX_TEXT:
            text = text[: MAX_TEXT - 1] + "…"
        if self.format == "discord":
            return {"content": text}
        if self.format == "telegram":
            assert self.chat_id is not None  # noqa: S101 - parse_webhook requires it
            return {"chat_id": self.chat_id, "text": text}
        return {"text": text}


def detect_format(url: str) -> WebhookFormat:
    """The format a webhook URL implies (Slack's `{"text"}` for an unknown host)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == "api.telegram.org" and parts.path.startswith("/bot"):
        return "telegram"
    if host in {"discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com"} and (
        parts.path.startswith("/api/webhooks/")
    ):
        return "discord"
    return "slack"


def parse_webhook(url: str, fmt: WebhookFormat | None = None) -> Webhook:
    """The webhook of `url` (format detected unless given); ValueError with a one-line
    reason for a URL that cannot be one."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a webhook URL must be http(s)://host/..., not {redacted(url)!r}")
    chosen = fmt or detect_format(url)
    chat_id = None
    if chosen == "telegram":
        chat_id = dict(parse_qsl(parts.query)).get("chat_id")
        if not chat_id:
            raise ValueError(
                "a Telegram webhook URL needs its chat: "
                "https://api.telegram.org/bot<token>/sendMessage?chat_id=<id>"
            )
    return Webhook(url, chosen, chat_id)


def webhook_id(url: str) -> str:
    """16 bytes of SHA-256 in hex over the URL without its secrets (see the module)."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = parts.path
    if host == "api.telegram.org" and path.startswith("/bot"):
        token, _, rest = path.removeprefix("/bot").partition("/")
        path = f"/bot{token.partition(':')[0]}/{rest}"
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    canonical = f"{parts.scheme.lower()}://{netloc}{path}?{query}"
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def redacted(url: str) -> str:
    """The URL for logs: scheme and host only (a webhook's path and query are its secret)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


# --- retries -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do after an answer: `done`, `retry` after `wait_s`, or `refused` (permanent)."""

    action: Literal["done", "retry", "refused"]
    wait_s: float = 0.0
    reason: str = ""


def backoff_s(attempt: int) -> float:
    """The wait before retry number `attempt` (1, 2, ...): 0.5 s doubling, at most 60 s."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * float(2 ** min(max(attempt - 1, 0), 16)))


def retry_after_s(header: str | None, body: Any, now: datetime) -> float | None:  # noqa: ANN401
    """The wait a 429 asks for: the Retry-After header (seconds or an HTTP date, against
    `now`), else Telegram's `parameters.retry_after`; None when it says nothing usable."""
    if header is not None and header.strip():
        text = header.strip()
        try:
            return _bounded(float(Decimal(text)))
        except (InvalidOperation, ValueError):
            pass
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return _bounded((when - now).total_seconds())
    if isinstance(body, Mapping):
        params = body.get("parameters")
        if isinstance(params, Mapping) and isinstance(params.get("retry_after"), int | float):
            return _bounded(float(params.get("retry_after", 0)))
    return None


def _bounded(seconds: float) -> float | None:
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def outcome(status: int, attempt: int, retry_after: float | None, reason: str) -> Outcome:
    """What an HTTP answer means for the event (attempt: 1 for the first post)."""
    if 200 <= status < 300:
        return Outcome("done")
    if status in (408, 429) or status >= 500:
        wait = backoff_s(attempt)
        if retry_after is not None:
            wait = max(wait, retry_after) if status != 429 else retry_after
        return Outcome("retry", wait, f"HTTP {status}: {reason}".rstrip(": "))
    return Outcome("refused", 0.0, f"HTTP {status}: {reason}".rstrip(": "))


# --- the token bucket ----------------------------------------------------------------------


class TokenBucket:
    """At most `rate` posts per second on average, `burst` at once (default: max(1, rate)).

    Pure: the caller passes the monotonic time in. `take(now)` takes a token and returns 0,
    or returns how long to wait before one is there (taking nothing).
    """

    def __init__(self, rate: float, burst: float | None = None, *, now: float = 0.0) -> None:
        if not rate > 0:
            raise ValueError(f"the rate must be more than 0 posts per second, not {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._at = now

    def take(self, now: float) -> float:
        """0 and one token taken, or the seconds until a token is there."""
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


# --- the text of an event ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Names:
    """Names looked up for an event (None: show the id)."""

    agent: str | None = None
    signal_key: str | None = None


def event_text(event: Mapping[str, Any], names: Names = Names()) -> str:
    """One human-readable line for an event of EVENTS_TOPIC."""
    kind = str(event.get("type", "?"))
    agent = names.agent or _short(event.get("agent_id")) or "an agent"
    token = _token(event)
    signal = names.signal_key or event.get("signal_key") or event.get("signal_id")
    of_signal = f" (signal {signal})" if signal is not None else ""
    if kind in ("buy", "dca_buy"):
        verb = "bought" if kind == "buy" else "DCA-bought"
        return (
            f"{agent} {verb} {_num(event.get('sol'))} SOL of {token} at "
            f"{_num(event.get('price_sol'))} SOL{of_signal}"
        )
    if kind == "take_profit_sale":
        return (
            f"{agent} took profit on {token}: sold {_num(event.get('token_amount'))} for "
            f"{_num(event.get('sol'))} SOL at {_num(event.get('price_sol'))} SOL"
        )
    if kind == "position_closed":
        return (
            f"{agent} closed {token}: {event.get('close_reason') or '?'}, P/L "
            f"{_signed(event.get('profit_loss_sol'))} SOL "
            f"({_signed(event.get('change_percent'), places=1)}%)"
        )
    if kind == "executions_not_traded":
        return _not_traded_text(event, token, of_signal)
    if kind == "command_result":
        return _command_text(event, names)
    if kind == "dead_letter":
        return (
            f"dead-lettered {event.get('source_record') or 'a record'}: "
            f"{event.get('reason') or event.get('kind') or 'no reason given'}"
        )
    return f"{kind} event {event.get('event_id', '')}".rstrip()


def _not_traded_text(event: Mapping[str, Any], token: str, of_signal: str) -> str:
    """`3 agents skipped, 1 failed to buy X (signal k): first reason (and 3 more)`; for an
    event sent without its list (too large for the topic), how many and where they are."""
    truncated = event.get("truncated")
    if "executions" not in event and isinstance(truncated, Mapping):
        counts = truncated.get("counts")
        n = counts.get("executions") if isinstance(counts, Mapping) else None
        who = (
            f"{n:,} agents" if isinstance(n, int) and n != 1 else "1 agent" if n == 1 else "agents"
        )
        return (
            f"{who} did not buy {token}{of_signal}: each agent's reason is in "
            "signal_executions (the list was too large for the events topic)"
        )
    executions = [e for e in event.get("executions") or () if isinstance(e, Mapping)]
    skipped = sum(e.get("status") == "skipped" for e in executions)
    failed = len(executions) - skipped
    parts = [f"{n} agent{'s' if n != 1 else ''} {what}" for n, what in
             ((skipped, "skipped"), (failed, "failed to buy")) if n]  # fmt: skip
    reasons = [str(e.get("reason") or "no reason given") for e in executions]
    why = reasons[0] if reasons else "no reason given"
    more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return f"{', '.join(parts) or 'no agent'} {token}{of_signal}: {why}{more}"


def _command_text(event: Mapping[str, Any], names: Names) -> str:
    command = event.get("command") or "command"
    target = names.agent or _short(event.get("agent_id"))
    on = f" for {target}" if target else ""
    key = f" (key {event['idempotency_key']})" if event.get("idempotency_key") else ""
    if event.get("status") == "applied":
        return f"{command}{on} applied{key}"
    return f"{command}{on} refused{key}: {event.get('reason') or 'no reason given'}"


def _token(event: Mapping[str, Any]) -> str:
    symbol = event.get("token_symbol")
    if isinstance(symbol, str) and symbol.strip():
        return symbol.strip()
    return _short(event.get("token_address")) or "a token"


def _short(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= 12 else f"{text[:4]}…{text[-4:]}"


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _num(value: object) -> str:
    number = _decimal(value)
    if number is None or not number.is_finite():
        return "?"
    text = format(number.normalize(), "f")
    return text if number != 0 else "0"


def _signed(value: object, *, places: int | None = None) -> str:
    number = _decimal(value)
    if number is None or not number.is_finite():
        return "?"
    if places is not None:
        number = number.quantize(Decimal(1).scaleb(-places))
        text = format(number, "f")
    else:
        text = _num(number)
    return text if text.startswith("-") else f"+{text}"
