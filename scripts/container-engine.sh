#!/usr/bin/env bash
# A container engine, the base image, the worker image and helm, for `make image` and the
# tests (tests/containers/). Installs what is missing on a Debian machine (as root).
#
#   scripts/container-engine.sh engine        prints CONTAINER_ENGINE=docker|podman and
#                                             CONTAINERS_CONF=FILE (podman only), one per line
#   scripts/container-engine.sh base          makes sure python:3.11-slim is there: pulled, or
#                                             where it cannot be pulled, a stand-in (below)
#   scripts/container-engine.sh build [TAG]   builds the image from the Dockerfile (default tag
#                                             signal-worker:local); prints the tag
#   scripts/container-engine.sh run [TAG]     runs the image (default signal-worker:local) as
#                                             `make run` runs the worker: `migrate`, then
#                                             `run` in the foreground, on the host network, with
#                                             every setting of the caller's environment
#                                             (DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS needed);
#                                             container name $CONTAINER_NAME (signal-worker);
#                                             prints each engine command it runs
#   scripts/container-engine.sh helm          prints the path of helm $HELM_VERSION, built once
#                                             with `go install` into the cache, with the
#                                             ldflags of helm's Makefile (its version and
#                                             default Kubernetes version, not 1.20)
#
# Engine: Docker where an engine answers (`docker info`), else podman (Debian's package,
# installed with apt-get when missing). CONTAINER_ENGINE=docker|podman forces one. Podman runs
# with a containers.conf of ours (CONTAINERS_CONF) that sets no default rlimits: sandboxes
# refuse the ones podman sets ("error setting rlimit type 7: operation not permitted").
#
# Base image: where docker.io cannot be reached, python:3.11-slim is replaced by a faithful
# stand-in built from Debian's packages: `debootstrap --variant=minbase` of bookworm (whose
# python3 is 3.11, the slim image's minor version) with python3-venv and ca-certificates, a
# `python` symlink, and this machine's CA bundle (pip inside the build reaches PyPI through
# this network with it). It is imported under the real name and labelled; it is rebuilt when
# STAND_IN_REVISION changes or it is older than STAND_IN_MAX_AGE_DAYS (security updates).
#
# Caches: the stand-in and every image layer live in the engine's own storage; helm and the
# podman config in $SIGNAL_WORKER_CACHE (default ~/.cache/signal-worker), outside the clone,
# so a fresh clone on the same machine reuses them.
#
# Every failure ends in one line on stderr, `[containers] error: ...`, and exit 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SIGNAL_WORKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/signal-worker}
BASE_IMAGE=docker.io/library/python:3.11-slim
STAND_IN_SUITE=bookworm
STAND_IN_REVISION=1
STAND_IN_MAX_AGE_DAYS=${STAND_IN_MAX_AGE_DAYS:-30}
STAND_IN_LABEL=io.signal-worker.stand-in
PULL_TIMEOUT_S=${PULL_TIMEOUT_S:-120}
# helm 3.21.4: the newest v3 approved for this project's machines (3.22.0 is served by the
# Go module proxy but not approved). HELM_KUBE_VERSION is the Kubernetes version it defaults
# to, as its Makefile stamps it in: 1.N for its k8s.io/client-go v0.N (checked at build).
HELM_VERSION=v3.21.4
HELM_KUBE_VERSION=1.36
DEFAULT_TAG=signal-worker:local

log() { printf '[containers] %s\n' "$*" >&2; }
die() { printf '[containers] error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"

# ---------------------------------------------------------------------------- engine

docker_answers() {
    command -v docker >/dev/null 2>&1 \
        && timeout 10 docker info --format '{{.ServerVersion}}' >/dev/null 2>&1
}

cgroups_hybrid() { # cgroup v1 hierarchies plus a cgroup2 mount with controllers of its own
    [[ -n $(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null) ]]
}

podman_conf() { # our containers.conf (podman reads only it when CONTAINERS_CONF is set)
    local conf=$CACHE/containers.conf runtime=""
    if cgroups_hybrid; then
        # crun refuses hybrid cgroups ("cgroups in hybrid mode not supported"); runc runs there.
        need_package runc runc
        runtime='runtime = "runc"'
    fi
    cat >"$conf.tmp" <<EOF
# Written by scripts/container-engine.sh, used through CONTAINERS_CONF.
[containers]
# Sandboxed machines refuse the rlimits podman sets by default ("error setting rlimit type
# 7/6: operation not permitted"): inherit the caller's.
default_ulimits = []

[engine]
$runtime
EOF
    mv "$conf.tmp" "$conf"
    echo "$conf"
}

can_apt() { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; }

apt_install() { # packages...: Debian's, as root; non-zero when apt-get fails (see apt.log)
    log "installing Debian's $* with apt-get"
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
    } >"$CACHE/apt.log" 2>&1
}

need_package() { # command package: install the package when the command is missing
    command -v "$1" >/dev/null && return 0
    can_apt || die "$1 is not installed, and installing Debian's $2 needs root and apt-get"
    apt_install "$2" || die "apt-get install $2 failed; see $CACHE/apt.log"
}

podman_ready() {
    if ! command -v podman >/dev/null; then
        can_apt || die "no Docker engine answers and podman is not installed (installing it needs root and apt-get): start a Docker engine or install podman"
        apt_install podman \
            || die "no Docker engine answers and podman could not be installed (apt-get install podman failed; see $CACHE/apt.log)"
    fi
    CONTAINERS_CONF=$(podman_conf)
    export CONTAINERS_CONF
    podman info >/dev/null 2>&1 || die "podman is installed but \`podman info\` fails: $(podman info 2>&1 | tail -n 1)"
}

ENGINE=
select_engine() {
    [[ -n $ENGINE ]] && return 0
    case ${CONTAINER_ENGINE:-} in
    docker) docker_answers || die "CONTAINER_ENGINE=docker but no Docker engine answers (docker info)"; ENGINE=docker ;;
    podman) podman_ready; ENGINE=podman ;;
    "")
        if docker_answers; then
            ENGINE=docker
        else
            podman_ready
            ENGINE=podman
        fi
        ;;
    *) die "CONTAINER_ENGINE must be docker or podman, not ${CONTAINER_ENGINE}" ;;
    esac
}

engine() { "$ENGINE" "$@"; }

# ---------------------------------------------------------------------------- base image

label_of() { # image label -> its value, empty when unset
    engine image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null | sed 's/<no value>//'
}

stand_in_fresh() { # 0 when the local base image is the real one, or a current stand-in
    local revision built now
    engine image inspect "$BASE_IMAGE" >/dev/null 2>&1 || return 1
    revision=$(label_of "$BASE_IMAGE" "$STAND_IN_LABEL")
    [[ -z $revision ]] && return 0 # the real image
    if [[ $revision != "$STAND_IN_SUITE-$STAND_IN_REVISION" ]]; then
        log "base image: the stand-in is revision $revision, not $STAND_IN_SUITE-$STAND_IN_REVISION; rebuilding it"
        return 1
    fi
    built=$(label_of "$BASE_IMAGE" "$STAND_IN_LABEL.built")
    now=$(date +%s)
    if ((now - ${built:-0} > STAND_IN_MAX_AGE_DAYS * 86400)); then
        log "base image: the stand-in is older than $STAND_IN_MAX_AGE_DAYS days; rebuilding it"
        return 1
    fi
    return 0
}

build_stand_in() {
    [[ $(id -u) -eq 0 ]] || die "$BASE_IMAGE cannot be pulled, and building a stand-in needs root (debootstrap)"
    need_package debootstrap debootstrap
    local rootfs started=$SECONDS
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this very folder
    trap "rm -rf '$rootfs'" EXIT
    log "base image: $BASE_IMAGE cannot be pulled; building a stand-in from Debian $STAND_IN_SUITE (debootstrap, about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$STAND_IN_SUITE" "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
        >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap of $STAND_IN_SUITE failed; see $CACHE/debootstrap.log"
    log "base image: debootstrap done after $((SECONDS - started))s; importing it"
    ln -sf python3 "$rootfs/usr/bin/python"
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] \
        && cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    tar --numeric-owner -C "$rootfs" -c . | engine import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL $STAND_IN_LABEL=$STAND_IN_SUITE-$STAND_IN_REVISION" \
        --change "LABEL $STAND_IN_LABEL.built=$(date +%s)" \
        --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >>"$CACHE/debootstrap.log" 2>&1 \
        || die "importing the stand-in base image failed; see $CACHE/debootstrap.log"
    rm -rf "$rootfs"
    trap - EXIT
    log "base image: stand-in $BASE_IMAGE ready after $((SECONDS - started))s (Debian $STAND_IN_SUITE)"
}

ensure_base() {
    stand_in_fresh && return 0
    log "base image: pulling $BASE_IMAGE"
    if timeout "$PULL_TIMEOUT_S" "$ENGINE" pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image: pulled $BASE_IMAGE"
        return 0
    fi
    build_stand_in
}

# ---------------------------------------------------------------------------- image

project_version() {
    sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n 1
}

build_image() {
    local tag=${1:-$DEFAULT_TAG} version logfile started=$SECONDS status=0
    local -a flags=()
    version=$(project_version)
    [[ -n $version ]] || die "no version in pyproject.toml"
    logfile=$CACHE/image-build.log
    if [[ $ENGINE == podman ]]; then
        # docker format keeps the HEALTHCHECK (OCI images have none); the base image is
        # local by now (pulled or the stand-in), so never pull; the host network reaches PyPI.
        flags+=(--format docker --pull=never --network host)
    fi
    log "image: building $tag (signal-worker $version) with $ENGINE; log: $logfile"
    "$ENGINE" build "${flags[@]}" --build-arg "VERSION=$version" --tag "$tag" \
        --file "$ROOT/Dockerfile" "$ROOT" >"$logfile" 2>&1 &
    local pid=$! last=""
    # Progress: the step the build is at, every 15 s while it runs.
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if (((SECONDS - started) % 15 == 0)); then
            last=$(grep -E 'STEP [0-9]+/[0-9]+|^#[0-9]+ \[' "$logfile" | tail -n 1 || true)
            last=${last:-starting}
            log "image: ${last:0:90} ($((SECONDS - started))s)"
        fi
    done
    wait "$pid" || status=$?
    if ((status != 0)); then
        tail -n 25 "$logfile" >&2
        die "image build failed (exit $status); see $logfile"
    fi
    # Keep the dependency layers as the next build's cache (a tagged builder stage), and drop
    # the builds this one superseded (untagged, and only ours: by label).
    "$ENGINE" build "${flags[@]}" --target builder --tag "${tag%:*}:builder" \
        --file "$ROOT/Dockerfile" "$ROOT" >>"$logfile" 2>&1 \
        || die "tagging the builder stage failed; see $logfile"
    "$ENGINE" image prune --force --filter label=io.signal-worker.stage >/dev/null 2>&1 || true
    log "image: $tag built in $((SECONDS - started))s"
    echo "$tag"
}

# ---------------------------------------------------------------------------- run

image_settings() { # tag -> the names of the settings the image's worker reads, one line
    engine run --rm --network none --no-healthcheck --entrypoint python "$1" -c \
        'from worker.settings import Settings; print(*(n.upper() for n in Settings.model_fields))'
}

show() { # the command, as one could paste it (podman's CONTAINERS_CONF in front)
    local prefix=""
    [[ $ENGINE == podman ]] && prefix="CONTAINERS_CONF=$CONTAINERS_CONF "
    log "run: $prefix$*"
}

run_image() {
    local tag=${1:-$DEFAULT_TAG} name=${CONTAINER_NAME:-signal-worker} names setting
    local -a flags=(--network host --read-only)
    [[ -n ${DATABASE_URL:-} ]] || die "run: set DATABASE_URL (make run-image points it at the local services)"
    [[ -n ${KAFKA_BOOTSTRAP_SERVERS:-} ]] || die "run: set KAFKA_BOOTSTRAP_SERVERS (make run-image points it at the local services)"
    engine image inspect "$tag" >/dev/null 2>&1 || die "run: $ENGINE has no image $tag: build it with make image IMAGE=$tag"
    if [[ $ENGINE == podman && ! -S /run/systemd/private ]]; then
        # podman runs HEALTHCHECKs from systemd timers; without systemd every run logs errors.
        flags+=(--no-healthcheck)
    fi
    names=$(image_settings "$tag" 2>"$CACHE/run.log") \
        || die "run: $tag does not start: $(tail -n 1 "$CACHE/run.log")"
    for setting in $names; do
        [[ $setting =~ ^[A-Z][A-Z0-9_]*$ ]] || continue
        # By name only: the engine takes the value from this environment (no secret printed).
        if [[ -n ${!setting+set} ]]; then flags+=(--env "$setting"); fi
    done
    show "$ENGINE" run --rm "${flags[@]}" "$tag" migrate
    engine run --rm "${flags[@]}" "$tag" migrate || die "run: migrate failed (exit $?); its log is above"
    log "run: starting the worker in the container $name; /healthz, /readyz and /metrics on port ${HTTP_PORT:-8080}; Ctrl-C or \`$ENGINE stop $name\` stops it (it drains first)"
    show "$ENGINE" run --rm --name "$name" --stop-timeout 30 "${flags[@]}" "$tag" run
    exec "$ENGINE" run --rm --name "$name" --stop-timeout 30 "${flags[@]}" "$tag" run
}

# ---------------------------------------------------------------------------- helm

helm_ldflags() { # what helm's own Makefile stamps into a release build (see HELM_VERSION)
    local v=helm.sh/helm/v3
    printf '%s ' -w -s \
        -X "$v/internal/version.version=$HELM_VERSION" \
        -X "$v/pkg/chartutil.k8sVersionMajor=${HELM_KUBE_VERSION%.*}" \
        -X "$v/pkg/chartutil.k8sVersionMinor=${HELM_KUBE_VERSION#*.}" \
        -X "$v/pkg/lint/rules.k8sVersionMajor=${HELM_KUBE_VERSION%.*}" \
        -X "$v/pkg/lint/rules.k8sVersionMinor=${HELM_KUBE_VERSION#*.}"
}

helm_check_source() { # module dir: the variables the ldflags set exist, the Kubernetes version is go.mod's
    local src=$1 client_go want
    # `go build -X` silently ignores a variable that does not exist: check each one.
    grep -qE '^\s+version\s+=' "$src/internal/version/version.go" \
        && grep -qE '^\s+k8sVersionMinor\s+=' "$src/pkg/chartutil/capabilities.go" \
        && grep -qE '^\s+k8sVersionMinor\s+=' "$src/pkg/lint/rules/deprecations.go" \
        || die "helm $HELM_VERSION no longer has the version variables its ldflags set (internal/version.version, pkg/chartutil and pkg/lint/rules k8sVersionMajor/Minor): update helm_ldflags from its Makefile"
    # The Makefile's rule: Kubernetes 1.N for k8s.io/client-go v0.N.
    client_go=$(sed -n 's/^\s*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$src/go.mod")
    want=1.$client_go
    [[ $want == "$HELM_KUBE_VERSION" ]] \
        || die "helm $HELM_VERSION is built with k8s.io/client-go v0.$client_go: set HELM_KUBE_VERSION=$want in $0"
}

helm_verify() { # binary: it reports HELM_VERSION and renders for Kubernetes HELM_KUBE_VERSION
    local helm=$1 chart version kube
    version=$("$helm" version --template '{{.Version}}' 2>&1) || die "the new helm does not run: $version"
    [[ $version == "$HELM_VERSION" ]] || die "the new helm reports version $version, not $HELM_VERSION (see the ldflags in $0)"
    chart=$(mktemp -d "$CACHE/helm-probe.XXXXXX")
    mkdir -p "$chart/templates"
    printf 'apiVersion: v2\nname: probe\nversion: 0.1.0\n' >"$chart/Chart.yaml"
    printf 'kube: {{ .Capabilities.KubeVersion.Version }}\n' >"$chart/templates/kube.yaml"
    kube=$("$helm" template probe "$chart" 2>&1 | sed -n 's/^kube: //p')
    rm -rf "$chart"
    [[ $kube == "v$HELM_KUBE_VERSION.0" ]] \
        || die "the new helm defaults to Kubernetes ${kube:-?}, not v$HELM_KUBE_VERSION.0 (see the ldflags in $0)"
}

helm_path() {
    local ldflags key dir src tmp started=$SECONDS
    ldflags=$(helm_ldflags)
    # The folder is named by the build flags too: a helm built otherwise (an older script's,
    # without ldflags) is never reused.
    key=$(printf '%s' "$HELM_VERSION trimpath cgo0 $ldflags" | sha256sum | cut -c1-12)
    dir=$CACHE/helm-$HELM_VERSION-$key
    if [[ ! -x $dir/helm ]]; then
        command -v go >/dev/null || die "helm $HELM_VERSION is built with go install, and go is not installed"
        log "helm: building $HELM_VERSION (default Kubernetes $HELM_KUBE_VERSION) with go install (a few minutes, once; cached in $dir)"
        src=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" 2>"$CACHE/helm-build.log" \
            | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p') || true
        [[ -n $src && -d $src ]] \
            || die "go mod download helm.sh/helm/v3@$HELM_VERSION failed; see $CACHE/helm-build.log"
        helm_check_source "$src"
        tmp=$(mktemp -d "$CACHE/helm-build.XXXXXX")
        # shellcheck disable=SC2064 # expand now: the trap must remove this very folder
        trap "rm -rf '$tmp'" EXIT
        # As helm's Makefile builds a release: CGO off, -trimpath, its ldflags.
        CGO_ENABLED=0 GOBIN=$tmp go install -trimpath -ldflags "$ldflags" \
            "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >>"$CACHE/helm-build.log" 2>&1 \
            || die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed; see $CACHE/helm-build.log"
        helm_verify "$tmp/helm"
        rm -rf "$dir"
        mv "$tmp" "$dir"
        trap - EXIT
        log "helm: built in $((SECONDS - started))s"
    fi
    echo "$dir/helm"
}

# ---------------------------------------------------------------------------- main

case ${1:-} in
engine)
    select_engine
    echo "CONTAINER_ENGINE=$ENGINE"
    if [[ $ENGINE == podman ]]; then echo "CONTAINERS_CONF=$CONTAINERS_CONF"; fi
    ;;
base) select_engine; ensure_base ;;
build) select_engine; ensure_base; build_image "${2:-}" ;;
run) select_engine; run_image "${2:-}" ;;
helm) helm_path ;;
*)
    echo "usage: $0 engine | base | build [TAG] | run [TAG] | helm" >&2
    exit 2
    ;;
esac
