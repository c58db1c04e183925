"""Prometheus metrics of the worker (served on `/metrics`). Names are part of the dashboard."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric, on a registry of its own (tests and several apps in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "signal_worker_records_consumed", "Records consumed, by topic", ["topic"], registry=r
        )
        self.executions = Counter(
            "signal_worker_executions",
            "Signal executions written, by status",
            ["status"],
            registry=r,
        )
        self.dead_letters = Counter(
            "signal_worker_dead_letters",
            "Records sent to the dead-letter topic, by reason kind",
            ["reason"],
            registry=r,
        )
        self.dead_letters_truncated = Counter(
            "signal_worker_dead_letters_truncated",
            "Dead letters too large to send whole, by what they carry instead of the value "
            "(truncated: its first bytes; omitted: none)",
            ["payload"],
            registry=r,
        )
        self.events_published = Counter(
            "signal_worker_events_published",
            "Trade events the relay published to EVENTS_TOPIC, by type",
            ["type"],
            registry=r,
        )
        self.events_cut_down = Counter(
            "signal_worker_events_cut_down",
            "Trade events larger than EVENTS_TOPIC accepts, sent with their small fields only "
            "(`truncated` names the rest)",
            registry=r,
        )
        self.event_delay = Histogram(
            "signal_worker_event_delay_seconds",
            "From an event's commit (its outbox row) to its acknowledgement by Kafka",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.events_unpublished = Gauge(
            "signal_worker_events_unpublished",
            "Events in the outbox not yet published (as the active relay last counted)",
            registry=r,
        )
        self.events_oldest_unpublished = Gauge(
            "signal_worker_events_oldest_unpublished_seconds",
            "Age of the oldest event not yet published (0: none)",
            registry=r,
        )
        self.stale_ticks = Counter(
            "signal_worker_stale_ticks",
            "Price ticks not newer than the stored price of their token (they change nothing)",
            registry=r,
        )
        self.conflicting_signals = Counter(
            "signal_worker_conflicting_signals",
            "Signals whose idempotency key was stored before with a different payload",
            registry=r,
        )
        self.config_problems = Counter(
            "signal_worker_config_problems",
            "Agent configs seen with a problem, once per agent and config: unknown_keys "
            "(ignored keys), invalid (no buys; exits use the opening rules)",
            ["problem"],
            registry=r,
        )
        self.unstorable = Counter(
            "signal_worker_unstorable_values",
            "Writes left out because a value would not fit its numeric column, by what: buy "
            "(the execution failed), dca (skipped), trade (one position's sales at one tick), "
            "exits (every position of a token at one tick), snapshot (one wallet's)",
            ["what"],
            registry=r,
        )
        self.exits = Counter(
            "signal_worker_exits",
            "Positions fully closed, by close reason",
            ["close_reason"],
            registry=r,
        )
        self.latency = Histogram(
            "signal_worker_end_to_end_latency_seconds",
            "From a record's Kafka timestamp to the commit of its effects",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.signal_wait = Histogram(
            "signal_worker_signal_wait_seconds",
            "From reading a signal to deciding it: the wait for the prices before it in event "
            "time (the order, worker/pipeline/timeline.py)",
            # Fine below 100 ms (the benchmark's p50/p99 interpolate between buckets), and up to
            # minutes (a catch-up's signals wait for the price partitions to be read).
            buckets=(
                *(0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02),
                *(0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            ),
            registry=r,
        )
        self.late_records = Counter(
            "signal_worker_late_records",
            "Records readable after records later in event time were decided (beyond "
            "LATENESS_MS): decided right after them, by topic",
            ["topic"],
            registry=r,
        )
        self.order_markers = Counter(
            "signal_worker_order_markers",
            "Order markers written (`worker.pipeline.markers`): each lets the records waiting "
            "for an idle partition go at once, by topic",
            ["topic"],
            registry=r,
        )
        self.order_marker_moved = Counter(
            "signal_worker_order_marker_moved_records",
            "Records decided just after an order marker their partition holds before them "
            "though stamped before it (a copy of the input without markers would decide them "
            "at their own time), by topic",
            ["topic"],
            registry=r,
        )
        self.order_marker_failures = Counter(
            "signal_worker_order_marker_failures",
            "Order markers that could not be written (the records waiting go after "
            "LATENESS_MS instead)",
            registry=r,
        )
        self.order_buffered = Gauge(
            "signal_worker_order_buffered_records",
            "Records read and waiting for their turn in event-time order",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "signal_worker_batch_seconds",
            "Time to process one transaction's records (one lane's batch), commit included",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.consumer_lag = Gauge(
            "signal_worker_consumer_lag",
            "Records between the last processed offset and the partition's end",
            ["topic", "partition"],
            registry=r,
        )
        self.db_pool_in_use = Gauge(
            "signal_worker_db_pool_in_use", "Database connections in use", registry=r
        )
        self.retries = Counter(
            "signal_worker_retries",
            "Retries after server trouble, by cause (SERVER_SQLSTATES in worker/retry.py)",
            ["cause"],
            registry=r,
        )
        self.retrying = Gauge(
            "signal_worker_retrying",
            "Batches waiting now for the server to be well again, by cause: their records "
            "are held (offsets not stored), never dead-lettered",
            ["cause"],
            registry=r,
        )
        self.partitions_blocked = Gauge(
            "signal_worker_partitions_blocked",
            "Owned partitions not consumed because their stored offset does not belong to the "
            "log (topic_recreated: another topic id; past_log_end), until `offsets reset`",
            ["topic", "partition", "reason"],
            registry=r,
        )
        self.offsets_never_processed = Counter(
            "signal_worker_offsets_never_processed",
            "Offsets removed from the log (retention, delete-records) before they were processed",
            ["topic"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "signal_worker_assigned_partitions", "Partitions assigned to this worker", registry=r
        )
        # Measured every HEALTH_EVERY_S by worker/runtime/app.py `watch_health`, for the alerts
        # (deploy/prometheus/alerts.yml).
        self.ready = Gauge(
            "signal_worker_ready",
            "1 when the worker is ready (what /readyz answers), else 0",
            registry=r,
        )
        self.held_price_age = Gauge(
            "signal_worker_held_price_age_seconds",
            "Age of the oldest latest price among the tokens of open positions (0: none held); "
            "a position whose price stops moving is never closed by its exit rules",
            registry=r,
        )
        self.snapshot_failures = Counter(
            "signal_worker_snapshot_failures",
            "Hourly balance snapshots that failed (server trouble); redone at the next hour",
            registry=r,
        )
