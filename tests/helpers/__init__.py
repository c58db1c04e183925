"""Helpers for the tests, by topic (fixtures stay in the `conftest.py` files):

- `services`: where PostgreSQL and Kafka are; the own services the fault tests stop.
- `db`: databases of a test's own, and the queries tests read them with.
- `kafka`: topics of a test's own, publishing and reading back.
- `books`: users, agents, prices, signals and ticks.
- `ledger`: what a scenario published against what the ledger holds.
- `workers`: a worker's settings, in process or as a subprocess; its logs; waiting.
- `cli`: `python -m worker ...` runs.
- `http`: GET against a worker's server.
- `certificates`: self-signed certificates for TLS.
"""
