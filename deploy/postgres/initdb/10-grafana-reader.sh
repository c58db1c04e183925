#!/bin/sh
# The compose PostgreSQL runs this once, when it initialises its volume: the read-only
# login `grafana_reader` of the trading dashboard, with GRAFANA_DB_PASSWORD.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v reader=grafana_reader -v password="$GRAFANA_DB_PASSWORD" \
    -f /etc/signal-worker/grafana-reader.sql
