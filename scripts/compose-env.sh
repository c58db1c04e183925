#!/usr/bin/env bash
# Writes what docker-compose.yml requires and has no default for into .env (next to it),
# once: GRAFANA_ADMIN_PASSWORD and GRAFANA_DB_PASSWORD, random. Values already in .env or
# the shell are kept.
#
#   scripts/compose-env.sh [ENV_FILE]     (default: .env at the top of the repository)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_FILE=${1:-$ROOT/.env}

random_secret() { # 24 characters of [A-Za-z0-9]
    local out=""
    while ((${#out} < 24)); do
        out+=$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    done
    echo "${out:0:24}"
}

touch "$ENV_FILE"
chmod 600 "$ENV_FILE"
if [[ -z ${GRAFANA_ADMIN_PASSWORD:-} ]] && ! grep -q '^GRAFANA_ADMIN_PASSWORD=.' "$ENV_FILE"; then
    echo "GRAFANA_ADMIN_PASSWORD=$(random_secret)" >>"$ENV_FILE"
    echo "[compose] wrote a random GRAFANA_ADMIN_PASSWORD to $ENV_FILE (Grafana's admin password)" >&2
fi
if [[ -z ${GRAFANA_DB_PASSWORD:-} ]] && ! grep -q '^GRAFANA_DB_PASSWORD=.' "$ENV_FILE"; then
    echo "GRAFANA_DB_PASSWORD=$(random_secret)" >>"$ENV_FILE"
    echo "[compose] wrote a random GRAFANA_DB_PASSWORD to $ENV_FILE (the trading dashboard's read-only database login)" >&2
fi
