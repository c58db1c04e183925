#!/usr/bin/env bash
# Local Kafka and PostgreSQL for machines without a Docker engine.
#
#   scripts/services.sh up|down|status|purge|fetch   (fetch: the broker jars only)
#   scripts/services.sh start|stop|restart kafka|postgres
#
# Kafka is the real Apache Kafka broker (org.apache.kafka:kafka_2.13, pinned below) from
# Maven Central, run with `java -cp` as a single-node KRaft broker+controller on 127.0.0.1.
# PostgreSQL is Debian's server (installed with apt-get if missing), a private cluster run
# as the `postgres` user, on LOCAL_PG_PORT (5432) and LOCAL_KAFKA_PORT (9092).
#
# It never uses what it did not start without being told to: when something else already
# answers on one of those ports (another project's database, a broker of your own), it stops
# with one line saying what answers and how to choose: point DATABASE_URL /
# KAFKA_BOOTSTRAP_SERVERS at it (then it is used as it is), or run ours beside it on other
# ports (LOCAL_PG_PORT / LOCAL_KAFKA_PORT). Services that this script started, from this
# checkout or another one on the machine, are shared: each start is recorded by process id
# in $SERVICES_DIR/*.pid and in $REGISTRY (by port), and stopped by that id only.
set -euo pipefail

# Kafka 4.4.0, the newest 4.x release on Maven Central. aiokafka 0.14 speaks only the classic
# consumer-group protocol, which 4.x still serves; tests/integration/test_exactly_once.py
# fails at once if a broker upgrade breaks it (see README, "Kafka version").
KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVICES_DIR=${SERVICES_DIR:-$ROOT/.services}
KAFKA_HOST=127.0.0.1
KAFKA_PORT=${LOCAL_KAFKA_PORT:-9092}
KAFKA_SASL_PORT=${LOCAL_KAFKA_SASL_PORT:-9094}
KAFKA_CONTROLLER_PORT=${LOCAL_KAFKA_CONTROLLER_PORT:-9093}
PG_PORT=${LOCAL_PG_PORT:-5432}
START_TIMEOUT_S=${SERVICES_START_TIMEOUT_S:-90}
# A SCRAM user created at format time, for the Kafka security tests (not a secret: local only).
SCRAM_USER=${LOCAL_KAFKA_SCRAM_USER:-worker}
SCRAM_PASSWORD=${LOCAL_KAFKA_SCRAM_PASSWORD:-worker-secret}

# Services started by this script from any checkout of the project on this machine, by port.
REGISTRY=${SIGNAL_WORKER_SERVICES_REGISTRY:-/var/tmp/signal-worker-services}

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$SERVICES_DIR" "$REGISTRY"

# ---------------------------------------------------------------------------- helpers

port_open() { # host port -> 0 when something accepts TCP connections there
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

pid_alive() { # pidfile -> 0 when the recorded process runs
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pidfile() { # name pidfile [signal]: the signal that asks for a clean, prompt stop
    local name=$1 pidfile=$2 sig=${3:-TERM} pid i
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        log "$name: not started by this script (nothing to stop)"
        return 0
    fi
    pid=$(cat "$pidfile")
    log "$name: stopping process $pid"
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: process $pid still running after 30 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    # Only our own record: a start that ran meanwhile has written another process id.
    [[ $(cat "$pidfile" 2>/dev/null) == "$pid" ]] && rm -f "$pidfile"
    log "$name: stopped"
}

register() { # name port pid: record a start in the machine-wide registry
    printf '%s %s\n' "$3" "$SERVICES_DIR" >"$REGISTRY/$1-$2"
}

registered() { # name port -> 0 when a process this script started (any checkout) owns it
    local file=$REGISTRY/$1-$2 pid
    [[ -f $file ]] || return 1
    pid=$(cut -d' ' -f1 "$file")
    kill -0 "$pid" 2>/dev/null
}

unregister() { # name port: forget the record if it names a process that is gone
    registered "$1" "$2" || rm -f "$REGISTRY/$1-$2"
}

registered_by() { cut -d' ' -f2- "$REGISTRY/$1-$2" 2>/dev/null; }

# DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS named explicitly for the local port: use what is there.
pointed_pg() { [[ ${DATABASE_URL:-} == *"@127.0.0.1:$PG_PORT/"* || ${DATABASE_URL:-} == *"@localhost:$PG_PORT/"* ]]; }
pointed_kafka() { [[ ${KAFKA_BOOTSTRAP_SERVERS:-} == "$KAFKA_HOST:$KAFKA_PORT" || ${KAFKA_BOOTSTRAP_SERVERS:-} == "localhost:$KAFKA_PORT" ]]; }

foreign() { # name port what: something this script did not start answers there
    die "$1: 127.0.0.1:$2 is taken by something this project did not start ($3); to use it, set $4; to run ours beside it, set $5 to a free port"
}

# DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS pointing elsewhere: use them as they are.
external_kafka() {
    [[ -n ${KAFKA_BOOTSTRAP_SERVERS:-} && ${KAFKA_BOOTSTRAP_SERVERS} != "$KAFKA_HOST:$KAFKA_PORT" \
        && ${KAFKA_BOOTSTRAP_SERVERS} != "localhost:$KAFKA_PORT" ]]
}
external_pg() {
    [[ -n ${DATABASE_URL:-} && ${DATABASE_URL} != *"@127.0.0.1:$PG_PORT/"* \
        && ${DATABASE_URL} != *"@localhost:$PG_PORT/"* ]]
}

# ---------------------------------------------------------------------------- Kafka

KAFKA_DIR=$SERVICES_DIR/kafka
KAFKA_LIB=${KAFKA_CACHE_DIR:-$ROOT/.services}/kafka-$KAFKA_VERSION/lib
KAFKA_PID=$SERVICES_DIR/kafka.pid
KAFKA_LOG=$KAFKA_DIR/server.log

kafka_fetch() {
    [[ -f $KAFKA_LIB/.complete ]] && return 0
    command -v java >/dev/null || die "java not found: Kafka $KAFKA_VERSION needs Java 17 or newer"
    command -v mvn >/dev/null || die "mvn not found: it fetches the Kafka jars from Maven Central"
    log "kafka: fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies from Maven Central"
    local build=$(dirname "$KAFKA_LIB")/pom
    mkdir -p "$build"
    cat >"$build/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.signal-worker</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- The broker logs through SLF4J 1.7; this binds it to log4j2, which writes the log file. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
EOF
    rm -rf "$KAFKA_LIB"
    # Maven is quiet while it downloads (about 56 MB on a cold cache): say how far it is.
    local repo=${MAVEN_REPO:-$HOME/.m2/repository} before now started=$SECONDS mvn_pid
    before=$(du -sm "$repo" 2>/dev/null | cut -f1 || echo 0)
    mvn -q -B -Dstyle.color=never -Dmaven.repo.local="$repo" -f "$build/pom.xml" \
        dependency:copy-dependencies \
        -DoutputDirectory="$KAFKA_LIB" >"$build/mvn.log" 2>&1 &
    mvn_pid=$!
    while kill -0 "$mvn_pid" 2>/dev/null; do
        sleep 5
        kill -0 "$mvn_pid" 2>/dev/null || break
        now=$(du -sm "$repo" 2>/dev/null | cut -f1 || echo 0)
        log "kafka: downloading the broker jars: $((now - before)) MB so far ($((SECONDS - started))s)"
    done
    wait "$mvn_pid" || die "kafka: could not fetch the broker jars from Maven Central; see $build/mvn.log"
    touch "$KAFKA_LIB/.complete"
    log "kafka: $(ls "$KAFKA_LIB" | wc -l) jars in $KAFKA_LIB"
}

kafka_configure() {
    mkdir -p "$KAFKA_DIR/data"
    cat >"$KAFKA_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT,SASL_PLAINTEXT://$KAFKA_HOST:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,SASL_PLAINTEXT://$KAFKA_HOST:$KAFKA_SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SCRAM_USER="$SCRAM_PASSWORD";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$KAFKA_DIR/data
num.partitions=4
# The worker creates or requires its topics explicitly.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=67108864
EOF
    cat >"$KAFKA_DIR/log4j2.properties" <<EOF
# Rolled at 10 MB, five old files kept: a long-lived dev broker never fills the disk.
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $KAFKA_LOG
appender.file.filePattern = $KAFKA_LOG.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 5
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = WARN
EOF
}

kafka_format() {
    # A standalone KRaft controller records its own endpoint at format time: storage
    # formatted for another controller port is formatted again (its topics are lost).
    local recorded
    recorded=$(cat "$KAFKA_DIR/controller-port" 2>/dev/null || true)
    if [[ -f $KAFKA_DIR/data/meta.properties && $recorded != "$KAFKA_CONTROLLER_PORT" ]]; then
        log "kafka: storage was formatted for controller port ${recorded:-unknown}, not $KAFKA_CONTROLLER_PORT; formatting it again"
        rm -rf "$KAFKA_DIR/data"
        mkdir -p "$KAFKA_DIR/data"
    fi
    echo "$KAFKA_CONTROLLER_PORT" >"$KAFKA_DIR/controller-port"
    [[ -f $KAFKA_DIR/data/meta.properties ]] && return 0
    local cluster_id
    cluster_id=$(java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    log "kafka: formatting storage in $KAFKA_DIR/data (cluster $cluster_id)"
    java -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -cp "$KAFKA_LIB/*" kafka.tools.StorageTool \
        format --standalone -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
        --add-scram "SCRAM-SHA-256=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" \
        --add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" \
        >>"$KAFKA_DIR/format.log" 2>&1 \
        || die "kafka: formatting the storage failed; see $KAFKA_DIR/format.log"
}

kafka_ready() { # a metadata request answered, not merely an open port
    "$ROOT/scripts/kafka_ready.py" "$KAFKA_HOST:$KAFKA_PORT" 2>/dev/null
}

kafka_start() {
    if external_kafka; then
        log "kafka: KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS is set; using it as it is"
        return 0
    fi
    if pid_alive "$KAFKA_PID"; then
        register kafka "$KAFKA_PORT" "$(cat "$KAFKA_PID")"
        log "kafka: already running (process $(cat "$KAFKA_PID"))"
        return 0
    fi
    if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
        if registered kafka "$KAFKA_PORT"; then
            log "kafka: already running on $KAFKA_HOST:$KAFKA_PORT (started from $(registered_by kafka "$KAFKA_PORT"))"
            return 0
        fi
        if pointed_kafka; then
            log "kafka: KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS points at it; using it as it is"
            return 0
        fi
        foreign kafka "$KAFKA_PORT" "a Kafka broker or another server" \
            "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_HOST:$KAFKA_PORT" LOCAL_KAFKA_PORT
    fi
    kafka_fetch
    kafka_configure
    kafka_format
    log "kafka: starting Kafka $KAFKA_VERSION (KRaft) on $KAFKA_HOST:$KAFKA_PORT; log: $KAFKA_LOG"
    # setsid: its own session, so a Ctrl-C in the terminal that ran `make` does not reach it.
    setsid java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
        -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
        >>"$KAFKA_DIR/stdout.log" 2>&1 </dev/null 9>&- &
    echo $! >"$KAFKA_PID"
    register kafka "$KAFKA_PORT" "$(cat "$KAFKA_PID")"
    local waited=0 started=$SECONDS
    until kafka_ready; do
        if ! pid_alive "$KAFKA_PID"; then
            rm -f "$KAFKA_PID"
            die "kafka: the broker exited during start-up; see $KAFKA_LOG and $KAFKA_DIR/stdout.log"
        fi
        if ((waited >= START_TIMEOUT_S)); then
            die "kafka: no metadata answer after ${START_TIMEOUT_S}s; see $KAFKA_LOG"
        fi
        ((waited % 5 == 0)) && log "kafka: waiting for the broker to answer metadata ($((SECONDS - started))s)"
        sleep 1
        waited=$((SECONDS - started))
    done
    log "kafka: ready after $((SECONDS - started))s (process $(cat "$KAFKA_PID"))"
}

kafka_stop() { stop_pidfile kafka "$KAFKA_PID"; unregister kafka "$KAFKA_PORT"; }

# ---------------------------------------------------------------------------- PostgreSQL

PG_PID=$SERVICES_DIR/postgres.pid

pg_bindir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/postgres ]] && { echo "$dir"; return 0; }
    done
    return 1
}

pg_install() {
    pg_bindir >/dev/null && return 0
    [[ $(id -u) -eq 0 ]] || die "postgres: not installed; run as root or install Debian's postgresql package"
    log "postgres: installing Debian's postgresql package"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pg_bindir >/dev/null || die "postgres: apt-get install postgresql gave no server binaries"
}

pg_datadir() {
    # The server refuses to run as root, so it runs as `postgres`, which must reach its data
    # directory. A clone under a private folder (mode 700, as mktemp makes) is out of its
    # reach: then the data lives under /var/tmp, keyed by this services folder.
    local dir=$SERVICES_DIR/postgres
    if runuser -u postgres -- test -x "$SERVICES_DIR" 2>/dev/null; then
        echo "$dir"
    else
        echo "/var/tmp/signal-worker-pg/$(printf '%s' "$SERVICES_DIR" | md5sum | cut -c1-12)"
    fi
}

pg_ready() {
    "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null
}

pg_start() {
    if external_pg; then
        log "postgres: DATABASE_URL points elsewhere; using it as it is"
        return 0
    fi
    pg_install
    local bindir datadir waited=0
    bindir=$(pg_bindir)
    if pid_alive "$PG_PID"; then
        register postgres "$PG_PORT" "$(cat "$PG_PID")"
        log "postgres: already running (process $(cat "$PG_PID"))"
        return 0
    fi
    if pg_ready || port_open 127.0.0.1 "$PG_PORT"; then
        if registered postgres "$PG_PORT"; then
            log "postgres: already running on 127.0.0.1:$PG_PORT (started from $(registered_by postgres "$PG_PORT"))"
        elif pointed_pg; then
            log "postgres: DATABASE_URL points at 127.0.0.1:$PG_PORT; using it as it is"
        else
            foreign postgres "$PG_PORT" "$(pg_ready && echo "a PostgreSQL server" || echo "a server")" \
                "DATABASE_URL=postgresql://USER@127.0.0.1:$PG_PORT/signals" LOCAL_PG_PORT
        fi
        pg_ensure_db
        return 0
    fi
    datadir=$(pg_datadir)
    if [[ ! -f $datadir/PG_VERSION ]]; then
        log "postgres: creating a cluster in $datadir"
        mkdir -p "$datadir"
        chown postgres:postgres "$datadir"
        chmod 700 "$datadir"
        runuser -u postgres -- "$bindir/initdb" -D "$datadir" -U postgres --auth=trust \
            -E UTF8 --locale=C.UTF-8 >"$SERVICES_DIR/initdb.log" 2>&1 \
            || die "postgres: initdb failed; see $SERVICES_DIR/initdb.log"
        cat >>"$datadir/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$datadir'
max_connections = 300
shared_buffers = 256MB
# A disposable local server for development and tests: durability traded for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
    log "postgres: starting on 127.0.0.1:$PG_PORT (data: $datadir)"
    # setsid and setpriv exec (no fork), so $! is the postmaster itself: its own session
    # (a Ctrl-C of `make` does not reach it), running as postgres (it refuses root).
    setsid setpriv --reuid=postgres --regid=postgres --init-groups \
        "$bindir/postgres" -D "$datadir" -p "$PG_PORT" >>"$datadir/server.log" 2>&1 </dev/null 9>&- &
    echo $! >"$PG_PID"
    register postgres "$PG_PORT" "$(cat "$PG_PID")"
    local started=$SECONDS
    until pg_ready; do
        if ! pid_alive "$PG_PID"; then
            rm -f "$PG_PID"
            die "postgres: the server exited during start-up; see $datadir/server.log"
        fi
        ((waited >= START_TIMEOUT_S)) && die "postgres: not ready after ${START_TIMEOUT_S}s; see $datadir/server.log"
        ((waited % 5 == 0)) && log "postgres: waiting for the server ($((SECONDS - started))s)"
        sleep 1
        waited=$((SECONDS - started))
    done
    log "postgres: ready after $((SECONDS - started))s (process $(cat "$PG_PID"))"
    pg_ensure_db
}

pg_ensure_db() {
    local psql
    psql=$(pg_bindir)/psql
    if ! "$psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'signals'" 2>/dev/null | grep -q 1; then
        "$psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE signals" \
            || die "postgres: could not create the database signals as user postgres on 127.0.0.1:$PG_PORT"
        log "postgres: created database signals"
    fi
}

# SIGINT is PostgreSQL's fast shutdown: SIGTERM ("smart") would wait for every client.
pg_stop() { stop_pidfile postgres "$PG_PID" INT; unregister postgres "$PG_PORT"; }

# ---------------------------------------------------------------------------- main

usage() { echo "usage: $0 up|down|status|purge|fetch | start|stop|restart kafka|postgres" >&2; exit 2; }

purge() { # stop, then delete the data of both services (the broker jars stay cached)
    kafka_stop
    pg_stop
    local datadir
    datadir=$(pg_datadir)
    if [[ -f $datadir/postmaster.pid ]] && kill -0 "$(head -n 1 "$datadir/postmaster.pid")" 2>/dev/null; then
        die "postgres: a server still runs on $datadir (not started by this script); not deleting it"
    fi
    rm -rf "$KAFKA_DIR" "$datadir" "$SERVICES_DIR/initdb.log"
    log "purged: $KAFKA_DIR and $datadir"
}

status() {
    local name pidfile
    for name in kafka postgres; do
        pidfile=$SERVICES_DIR/$name.pid
        if pid_alive "$pidfile"; then echo "$name: running (process $(cat "$pidfile"))"
        else echo "$name: not started by this script"; fi
    done
}

# One start or stop at a time per services folder (tests restart services concurrently).
# The servers started below close this descriptor, so they never hold the lock.
exec 9>"$SERVICES_DIR/.lock"
flock 9

cmd=${1:-}
case $cmd in
up) pg_start; kafka_start ;;
down) kafka_stop; pg_stop ;;
purge) purge ;;
status) status ;;
fetch) kafka_fetch ;;
start | stop | restart)
    svc=${2:-}
    [[ $svc == kafka || $svc == postgres ]] || usage
    fn=${svc/postgres/pg}
    case $cmd in
    start) "${fn}_start" ;;
    stop) "${fn}_stop" ;;
    restart) "${fn}_stop"; "${fn}_start" ;;
    esac
    ;;
*) usage ;;
esac
