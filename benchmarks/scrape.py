"""The worker's own figures, read from its `/metrics`: histograms, counters and gauges.

A histogram is kept as its cumulative buckets; two scrapes of one run are subtracted (the
part of a run after its warm-up), and a quantile is interpolated linearly within the
bucket it falls in, as PromQL's `histogram_quantile` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

WAIT = "signal_worker_signal_wait_seconds"
LAG = "signal_worker_consumer_lag"
BUFFERED = "signal_worker_order_buffered_records"
LATE = "signal_worker_late_records_total"


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts by upper bound (the last bound is +Inf), and the sum."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    total: float  # the sum of the observations

    @property
    def count(self) -> int:
        """How many observations."""
        return int(self.counts[-1]) if self.counts else 0

    def since(self, earlier: Histogram | None) -> Histogram:
        """The observations made after `earlier` (a scrape of the same histogram)."""
        if earlier is None or not earlier.counts:
            return self
        if earlier.bounds != self.bounds:
            raise ValueError("the two scrapes have different buckets")
        counts = tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True))
        return Histogram(self.bounds, counts, self.total - earlier.total)

    def quantile(self, q: float) -> float:
        """The `q`-quantile (0..1), interpolated within its bucket; NaN for no observation.

        In the +Inf bucket it is the highest finite bound (a floor: the truth is above it)."""
        if not self.count:
            return math.nan
        rank = q * self.counts[-1]
        lower, below = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.counts, strict=True):
            if cumulative >= rank and cumulative > below:
                if math.isinf(bound):
                    return lower
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return lower

    @property
    def mean(self) -> float:
        """The mean observation; NaN for none."""
        return self.total / self.count if self.count else math.nan


@dataclass(frozen=True)
class Scrape:
    """One read of `/metrics`: every sample by (name, labels)."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        """Parse the Prometheus text format."""
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return cls(samples)

    def total(self, name: str) -> float:
        """The sum of `name` over all its label sets (0 when absent)."""
        return sum(v for (n, _), v in self.samples.items() if n == name)

    def histogram(self, name: str) -> Histogram:
        """The histogram `name` (unlabelled)."""
        buckets = []
        for (n, labels), value in self.samples.items():
            if n == f"{name}_bucket":
                bound = float(dict(labels)["le"])
                buckets.append((bound, value))
        buckets.sort()
        return Histogram(
            tuple(b for b, _ in buckets),
            tuple(c for _, c in buckets),
            self.samples.get((f"{name}_sum", ()), 0.0),
        )


async def scrape(port: int, *, timeout_s: float = 5) -> Scrape | None:
    """Read the worker's `/metrics` on 127.0.0.1:`port`; None when it does not answer."""
    status, body = await http_get(port, "/metrics", timeout_s=timeout_s)
    return Scrape.parse(body) if status == 200 else None


async def http_get(port: int, path: str, *, timeout_s: float = 5) -> tuple[int | None, str]:
    """(status, body) of GET `path` on 127.0.0.1:`port`; (None, "") when it does not answer."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout=timeout_s
        )
    except (OSError, TimeoutError):
        return None, ""
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=timeout_s)
    except (OSError, TimeoutError):
        return None, ""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return status, body.decode("utf-8", "replace")
