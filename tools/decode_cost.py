"""What decoding a message costs: the JSON parse with and without the duplicate-key hook,
and the whole `decode_signal` / `decode_price` (parse and validation).

Run: `.venv/bin/python -m tools.decode_cost`. Prints microseconds per message (best of
forty rounds); no assertion, the numbers are for a reader to compare across commits.
"""

from __future__ import annotations

import json
import time
import timeit
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

from worker.messages import decode_price, decode_signal

SIGNAL = json.dumps(
    {
        "user_id": "6f1c0f3e-8a47-4d0c-9a51-2d7c1e0b9f11",
        "token_address": "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr",
        "signal_type": "Velocity (Dex Boost Detection)",
        "signal_strength": 4,
        "symbol": "DEMO",
        "price_usd": "0.000123456789",
        "idempotency_key": "scanner-42-000017",
        "source": "scanner",
        "activation_reason": "volume x3 in 5 minutes",
        "created_at": "2026-11-26T12:00:00Z",
        "market_cap_usd": 1234567.5,
        "liquidity_usd": "45678.25",
        "holder_count": 812,
    }
).encode()
TICK = json.dumps(
    {
        "token_address": "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr",
        "price_usd": "0.52",
        "ts": "2026-11-26T12:00:00Z",
    }
).encode()
ROUNDS, NUMBER = 40, 5_000


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _per_message_us(*calls: Callable[[], object]) -> list[float]:
    """Each call's best CPU time per message over `ROUNDS` rounds; the calls take turns
    within a round, so that a busy machine slows them alike (the best is the least
    disturbed)."""
    best = [float("inf")] * len(calls)
    for _ in range(ROUNDS):
        for i, call in enumerate(calls):
            spent = timeit.timeit(call, number=NUMBER, timer=time.process_time)
            best[i] = min(best[i], spent / NUMBER * 1e6)
    return best


def main() -> None:
    """Print the cost of each step per message."""
    for name, raw in (("signal", SIGNAL), ("tick", TICK)):
        text = raw.decode()
        decoder: Callable[[bytes], object] = decode_signal if name == "signal" else decode_price
        plain, hooked, whole = _per_message_us(
            partial(json.loads, text, parse_float=Decimal),
            partial(json.loads, text, parse_float=Decimal, object_pairs_hook=_unique),
            partial(decoder, raw),
        )
        print(
            f"{name}: json.loads {plain:.2f} us, with the duplicate-key hook {hooked:.2f} us "
            f"(+{hooked - plain:.2f} us); whole decode {whole:.2f} us "
            f"({1e6 / whole:,.0f} messages/s on one core)"
        )


if __name__ == "__main__":
    main()
