"""The benchmark of signal-worker: throughput, latency and exits against the machine's limits.

`python -m benchmarks [--quick] [--out DIR] [--profile FILE]` (or `make bench`). Against the
real local services (`DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS`, or the defaults of
`scripts/services.sh`), in one run, it creates databases and topics of its own, measures:

1. throughput (agent executions committed per second) at fan-out 1, 10, 100 and 1,000,
   the worker running as a subprocess (`python -m worker run`) over a pre-published backlog;
2. latency from the producer's send (the record's CreateTime) to the commit of the
   signal's executions, at a fixed offered load of 200 signals/s x 10 agents;
3. exits: one price tick over 10,000 open positions of one token, and ticks/s over 1,000
   tokens;
4. the limits: raw aiokafka consumption of the same records, raw PostgreSQL COPY of the
   same rows, and a naive baseline (one transaction per agent execution);
5. the worker's peak resident memory (VmHWM) with 10,000 agents;

prints a table (progress on stderr), and writes `docs/benchmarks.md` and
`docs/benchmarks.png` (full runs, or `--out`). It drops what it created at the end.
"""
