#!/usr/bin/env bash
# Compose for `make up` / `make down`: checks first that it can work, then runs it.
#
#   scripts/compose.sh check          exits 0 when a compose command and a Docker engine are
#                                     there; else one line on stderr saying what is missing
#   scripts/compose.sh ARGS...        the check, then `docker compose ARGS` (or docker-compose)
#
# The compose command: `docker compose` (Docker's CLI plugin) where it answers, else
# `docker-compose` 1.29 or newer (Debian's package; older ones reject the file's
# `service_completed_successfully`). Either needs a Docker engine: compose is not run with
# podman here (`make run-image` runs the worker's image with podman against the local
# services instead). Without the check, the docker CLI with no plugin answers `docker compose
# up -d` with "unknown shorthand flag: 'd' in -d".
#
# Every failure is one line on stderr, `[compose] error: ...`, and exit 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { printf '[compose] error: %s\n' "$*" >&2; exit 1; }

HOW_TO_GET="install Docker's compose plugin (package docker-compose-plugin, from Docker's apt repository) or Debian's docker-compose (apt-get install docker-compose)"
WITHOUT="; without compose: make run, or make run-image for the image"

COMPOSE=()
find_compose() {
    if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
        return 0
    fi
    if command -v docker-compose >/dev/null; then
        local version
        version=$(docker-compose version --short 2>/dev/null || true)
        if [[ $version =~ ^v?([0-9]+)\.([0-9]+) ]] \
            && ((BASH_REMATCH[1] > 1 || (BASH_REMATCH[1] == 1 && BASH_REMATCH[2] >= 29))); then
            COMPOSE=(docker-compose)
            return 0
        fi
        die "docker-compose ${version:-of unknown version} is too old for docker-compose.yml (1.29 or newer is needed): $HOW_TO_GET$WITHOUT"
    fi
    die "no compose command (neither the \`docker compose\` plugin nor docker-compose is installed): $HOW_TO_GET$WITHOUT"
}

check() {
    find_compose
    command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1 \
        || die "${COMPOSE[*]} needs a Docker engine, and none answers (docker info)$WITHOUT"
}

case ${1:-} in
"") echo "usage: $0 check | ARGS..." >&2; exit 2 ;;
check) check ;;
*)
    check
    cd "$ROOT"
    exec "${COMPOSE[@]}" "$@"
    ;;
esac
