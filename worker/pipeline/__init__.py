"""The Kafka side: the consume loop and its transaction, batching, ordering, rebalances, dead
letters, the failure policy, the broker clients, and the metrics and log lines of committed work."""
