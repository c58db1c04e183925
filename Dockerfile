# signal-worker image: `make image` (Docker where an engine answers, else podman), or
#   docker build -t signal-worker .
#   docker run --rm signal-worker --version
#   docker run --rm -e DATABASE_URL=... signal-worker migrate
#   docker run --rm -e DATABASE_URL=... -e KAFKA_BOOTSTRAP_SERVERS=... signal-worker   (run)
# Settings come from the environment only (docs: contract section 2).
#
# Reproducible: the dependencies are exactly those of requirements.lock, hash-checked (pip
# --require-hashes), and the worker's wheel is built by exactly requirements-build.lock's
# setuptools (`make lock` refreshes both). The worker is installed as that wheel into the
# virtual environment, its migrations inside it as package data (worker/schema/), so it runs
# from site-packages: no source tree, no PYTHONPATH.
#
# At run time it is uid 10001 and writes nothing to its filesystem, so `--read-only` (and
# Kubernetes' readOnlyRootFilesystem) need no writable mount.

# ---------------------------------------------------------------------------- builder
FROM python:3.11-slim AS builder

# scripts/container-engine.sh tags this stage and prunes superseded builds by this label.
LABEL io.signal-worker.stage="builder"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# /opt/venv is what the runtime stage gets (no pip, no setuptools); /opt/build holds the tools.
RUN python -m venv --without-pip /opt/venv \
    && python -m venv /opt/build

WORKDIR /build
# The slow layer, rebuilt only when a lock file changes. Every dependency has wheels for
# CPython 3.11 on linux amd64/arm64: no compiler needed.
COPY requirements.lock requirements-build.lock ./
RUN /opt/build/bin/pip install --require-hashes -r requirements-build.lock \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --require-hashes -r requirements.lock

# The worker itself, as a wheel, without dependencies of its own to fetch; `pip check` fails
# the build when the lock does not satisfy what pyproject.toml requires.
COPY pyproject.toml README.md ./
COPY worker/ worker/
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /build/dist . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps --no-index /build/dist/*.whl \
    && /opt/build/bin/pip --python /opt/venv/bin/python check

# ---------------------------------------------------------------------------- runtime
FROM python:3.11-slim

# `make image` passes pyproject.toml's version; tests/unit/test_containers.py keeps this
# default equal to it, so a plain `docker build` labels the image right too.
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="signal-worker" \
      org.opencontainers.image.description="Trading signals from Kafka to simulated trades in PostgreSQL, exactly once." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      io.signal-worker.stage="runtime"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HTTP_PORT=8080

RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid worker --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin worker

# Owned by root and read-only for the worker user: the code cannot be changed at run time.
# Bytecode was compiled by pip at install time (PYTHONDONTWRITEBYTECODE stops the worker
# from trying to write any).
COPY --from=builder /opt/venv /opt/venv

# Fail the build at once if the worker, its dependencies or its migrations do not load.
RUN signal-worker --version \
    && python -c "from worker.db.migrations import default_schema_dir as d, load_migrations as l; assert l(d())"

USER 10001:10001

EXPOSE 8080

# /healthz answers while the process is alive (readiness is /readyz). No curl in the slim
# image: Python's urllib, which exits non-zero on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${HTTP_PORT:-8080}/healthz', timeout=3)" || exit 1

ENTRYPOINT ["signal-worker"]
CMD ["run"]
