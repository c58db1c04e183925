"""What a committed batch did, told to the metrics and the log (after the commit, never before).

One `agent_decided` line per agent and one `signal_processed` line per signal at info (not
even built when the level is above info), `tick_applied` at info when a tick traded and at
debug otherwise, each agent config problem once, a key reused with another payload as a
warning naming both records.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime

import structlog
from aiokafka.structs import TopicPartition

from worker.db.snapshots import Snapshots
from worker.domain.storable import Unstorable
from worker.handlers.config_cache import ConfigProblem
from worker.handlers.signals import SignalOutcome
from worker.handlers.ticks import TickOutcome
from worker.messages import SignalV1
from worker.metrics import Metrics
from worker.pipeline.batching import FANOUT_MEMORY, Chunk, Fanouts, Item, KafkaRecord
from worker.pipeline.markers import is_marker
from worker.retry import describe, server_trouble

log = structlog.get_logger(__name__)

Outcome = SignalOutcome | TickOutcome | None


class Reporter:
    """Metrics and log lines of committed work."""

    def __init__(self, metrics: Metrics, *, log_level: str, fanouts: Fanouts) -> None:
        self._metrics = metrics
        self._log_info = logging.getLevelName(log_level) <= logging.INFO
        self._fanouts = fanouts
        # Agent config problems already reported (each once, the last FANOUT_MEMORY kept).
        self._reported: OrderedDict[ConfigProblem, None] = OrderedDict()

    def committed(
        self,
        chunk: Chunk,
        outcomes: Sequence[tuple[Item, Outcome]],
        *,
        committed_at: float,
        started: float,
        highwater: Callable[[TopicPartition], int | None],
    ) -> None:
        """A chunk's transaction committed at `committed_at` (epoch s), `started` (perf s)."""
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        for record in chunk.records:
            if record.headers and is_marker(record):
                continue  # the worker's own: no one waits for it
            self._metrics.latency.observe(max(0.0, committed_at - record.timestamp / 1000))
        for tp, next_offset in chunk.next_offsets.items():
            end = highwater(tp)
            if end is not None:
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, end - next_offset)
                )
        for item, outcome in outcomes:
            with structlog.contextvars.bound_contextvars(**coordinates(item.record)):
                if isinstance(outcome, TickOutcome):
                    self._tick(outcome)
                elif outcome is not None and isinstance(item.message, SignalV1):
                    self._fanouts[item.message.user_id] = max(
                        1, len(outcome.outcomes) + outcome.already_done
                    )
                    self._signal(item.record, outcome, committed_at)

    def _tick(self, outcome: TickOutcome) -> None:
        for reason, count in outcome.closes.items():
            self._metrics.exits.labels(reason).inc(count)
        self.unstorable(outcome.unstorable)
        self.configs(outcome.config_problems)
        if not outcome.is_newer:
            self._metrics.stale_ticks.inc()
            log.debug("tick_not_newer", token=outcome.token, price_usd=str(outcome.price_usd))
            return
        emit = log.info if outcome.traded else log.debug
        emit(
            "tick_applied",
            token=outcome.token,
            price_usd=str(outcome.price_usd),
            positions=outcome.positions,
            trailed=outcome.trailed,
            closes=outcome.closes,
            take_profit_sales=outcome.partial_sales,
            dca_buys=outcome.dca_buys,
        )

    def unstorable(self, skipped: Sequence[Unstorable]) -> None:
        """Log and count each write left out because a value would not fit its column."""
        for u in skipped:
            self._metrics.unstorable.labels(u.what).inc()
            log.warning("unstorable_write_skipped", what=u.what, subject=u.subject,
                        reason=u.reason)  # fmt: skip

    def configs(self, problems: list[ConfigProblem]) -> None:
        """Log and count each agent config's problem once."""
        for problem in problems:
            if problem in self._reported:
                continue
            self._reported[problem] = None
            if len(self._reported) > FANOUT_MEMORY:
                self._reported.popitem(last=False)
            if problem.error is not None:
                self._metrics.config_problems.labels("invalid").inc()
                log.warning(
                    "agent_config_invalid",
                    agent_id=str(problem.agent_id),
                    error=problem.error,
                    effect="the agent buys nothing (its executions fail with this reason); "
                    "its open positions keep the exit rules they were opened with",
                )
            if problem.unknown_keys:
                self._metrics.config_problems.labels("unknown_keys").inc()
                log.warning(
                    "agent_config_unknown_keys",
                    agent_id=str(problem.agent_id),
                    keys=list(problem.unknown_keys[:20]),
                    effect="ignored (signal-worker agents lint lists every agent's)",
                )

    def _signal(self, record: KafkaRecord, outcome: SignalOutcome, committed_at: float) -> None:
        counts: dict[str, int] = {}
        for agent in outcome.outcomes:
            status = agent.decision.status.value
            counts[status] = counts.get(status, 0) + 1
        for status, n in counts.items():
            self._metrics.executions.labels(status).inc(n)
        self.configs(outcome.config_problems)
        self.unstorable(outcome.unstorable)
        if outcome.conflicts_with is not None:
            self._metrics.conflicting_signals.inc()
            log.warning(
                "signal_key_reused_with_other_payload",
                signal_id=outcome.signal_id,
                first_record=outcome.conflicts_with,
                effect="treated as the signal stored first (nothing executed again)",
            )
        if not self._log_info:
            return  # the lines below are info: skip building them per agent
        latency_ms = round((committed_at - record.timestamp / 1000) * 1000, 1)
        bound = log.bind(signal_id=outcome.signal_id)
        for agent in outcome.outcomes:
            bound.info(
                "agent_decided",
                agent_id=str(agent.agent_id),
                status=agent.decision.status.value,
                reason=agent.decision.reason,
                transaction_id=str(agent.transaction_id) if agent.transaction_id else None,
                latency_ms=latency_ms,
            )
        bound.info(
            "signal_processed",
            is_new_signal=outcome.is_new_signal,
            executions=counts,
            already_executed=outcome.already_done,
            latency_ms=latency_ms,
        )


def report_snapshots(done: Snapshots, hour: datetime, metrics: Metrics | None) -> None:
    """Log an hour's snapshots, and each wallet left out (counted as unstorable)."""
    for u in done.skipped:
        if metrics is not None:
            metrics.unstorable.labels(u.what).inc()
        log.warning("unstorable_write_skipped", what=u.what, subject=u.subject, reason=u.reason)
    log.info(
        "snapshots_written", hour=hour.isoformat(), wallets=done.written, skipped=len(done.skipped)
    )


def coordinates(record: KafkaRecord) -> dict[str, object]:
    """A record's topic, partition and offset, for log context."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


class Troubles:
    """The server troubles that work is retrying now (`worker.retry.server_trouble`): what
    `/readyz` says and `signal_worker_retrying` counts while records are held."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Per unit of work in trouble: (cause, the error, what waits, since: monotonic s).
        self._waiting: dict[str, tuple[str, str, str, float]] = {}

    def retrying(self, key: str, exc: BaseException, what: str) -> None:
        """The work `key` (`what`: the partitions and offsets) failed with `exc` and will
        retry."""
        cause = server_trouble(exc) or "unknown"
        since = self._waiting[key][3] if key in self._waiting else time.monotonic()
        self._set(key, (cause, describe(exc), what, since))

    def cleared(self, key: str) -> None:
        """The work `key` finished (or was given up): no longer in trouble."""
        self._set(key, None)

    def _set(self, key: str, state: tuple[str, str, str, float] | None) -> None:
        old = self._waiting.pop(key, None)
        if old is not None:
            self._metrics.retrying.labels(old[0]).dec()
        if state is not None:
            self._waiting[key] = state
            self._metrics.retrying.labels(state[0]).inc()

    def reason(self) -> str | None:
        """Why the worker is not ready while work waits for the server; else None."""
        if not self._waiting:
            return None
        cause, error, what, since = min(self._waiting.values(), key=lambda t: t[3])
        waited = time.monotonic() - since
        return (
            f"retrying {len(self._waiting)} batch(es) for {waited:.0f} s: {cause} ({error}), "
            f"the longest waiting: {what}; their records are held, not dead-lettered"
        )
