"""signal-worker: trading signals from Kafka to simulated trades in PostgreSQL, exactly once."""

__version__ = "0.1.0"
