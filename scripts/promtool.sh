#!/usr/bin/env bash
# promtool (Prometheus's rule checker and rule unit tester) for the alert rules' tests
# (tests/unit/test_alerts.py) and by hand:
#
#   scripts/promtool.sh path          prints the path of promtool $PROMTOOL_VERSION, built once
#                                     with `go install` into the cache
#   scripts/promtool.sh ARGS...       runs that promtool with ARGS (e.g. test rules FILE)
#
# Built from the Go module proxy (the only way in from this network: no release download),
# like helm in scripts/container-engine.sh, into $SIGNAL_WORKER_CACHE (default
# ~/.cache/signal-worker), outside the clone, so a fresh clone on the same machine reuses it.
# The first build downloads and compiles the part of Prometheus's module graph promtool needs
# (README "Alerts"); later runs take no time.
#
# Every failure ends in one line on stderr, `[promtool] error: ...`, and exit 1.
set -euo pipefail

CACHE=${SIGNAL_WORKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/signal-worker}
# Prometheus v3.16.0 (the module's v0.316.0): a rule checker at least as new as the Prometheus
# of docker-compose.yml, which accepts the same rule files.
PROMTOOL_VERSION=v0.316.0
# Without the service discovery plugins (cloud SDKs: most of the build) but DNS's, which
# deploy/prometheus/prometheus.yml uses: rules, their tests and that config need no other.
PROMTOOL_TAGS=remove_all_sd,enable_dns_sd
PROGRESS_S=30

log() { printf '[promtool] %s\n' "$*" >&2; }
die() { printf '[promtool] error: %s\n' "$*" >&2; exit 1; }

promtool_path() {
    local dir=$CACHE/promtool-$PROMTOOL_VERSION-dns-sd started=$SECONDS logfile pid status=0 next
    if [[ ! -x $dir/promtool ]]; then
        command -v go >/dev/null \
            || die "promtool $PROMTOOL_VERSION is built with go install, and go is not installed"
        mkdir -p "$dir"
        logfile=$CACHE/promtool-build.log
        log "building promtool $PROMTOOL_VERSION with go install (minutes, once; cached in $dir; log: $logfile)"
        GOBIN=$dir go install -v -tags "$PROMTOOL_TAGS" \
            "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION" >"$logfile" 2>&1 &
        pid=$!
        # Progress: the package being compiled, every PROGRESS_S seconds while it runs.
        next=$((SECONDS + PROGRESS_S))
        while kill -0 "$pid" 2>/dev/null; do
            sleep 1
            if ((SECONDS >= next)); then
                log "still building: $(tail -n 1 "$logfile" | cut -c1-80) ($((SECONDS - started))s)"
                next=$((next + PROGRESS_S))
            fi
        done
        wait "$pid" || status=$?
        ((status == 0)) && [[ -x $dir/promtool ]] \
            || die "go install github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION failed (exit $status): $(tail -n 1 "$logfile"); see $logfile"
        log "built in $((SECONDS - started))s"
    fi
    echo "$dir/promtool"
}

mkdir -p "$CACHE"
case ${1:-} in
path) promtool_path ;;
"")
    echo "usage: $0 path | ARGS... (promtool's own)" >&2
    exit 2
    ;;
*)
    tool=$(promtool_path)
    exec "$tool" "$@"
    ;;
esac
