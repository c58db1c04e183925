# signal-worker image: `docker build -t signal-worker .`, then
#   docker run --rm signal-worker migrate
#   docker run --rm -p 8080:8080 signal-worker run      (the default command)
# Settings come from the environment only (docs: contract section 2).
#
# Layout, and why: the migration runner finds its SQL at `<parent of the worker package>/schema`
# (worker/db/migrations.py: `Path(__file__).resolve().parents[2] / "schema"`). A plain
# `pip install .` would put the package in site-packages, away from schema/. So the venv
# holds only the third-party dependencies (taken from pyproject.toml), and the final stage puts
# the source at /app, `worker/` and `schema/` side by side, with /app on PYTHONPATH. The entry
# point is `python -m worker` (same commands as the `signal-worker` console script).

# ---------------------------------------------------------------------------- builder
FROM python:3.11-slim AS builder

# Bytecode is written here on purpose: pip compiles the dependencies once, at build time.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# Only pyproject.toml, so this layer (the slow one) is rebuilt only when dependencies change.
# Every dependency has wheels for CPython 3.11 on linux amd64/arm64: no compiler needed.
COPY pyproject.toml ./
RUN python -c "import tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
open('requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install -r requirements.txt

# ---------------------------------------------------------------------------- runtime
FROM python:3.11-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="signal-worker" \
      org.opencontainers.image.description="Trading signals from Kafka to simulated trades in PostgreSQL, exactly once." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HTTP_PORT=8080

RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid worker --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin worker

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Owned by root and read-only for the worker user: the code cannot be changed at run time.
COPY schema/ /app/schema/
COPY worker/ /app/worker/
# Byte-compile once here (PYTHONDONTWRITEBYTECODE stops the non-root user from trying at run
# time), and fail the build at once if the package or its dependencies do not import.
RUN python -m compileall -q /app/worker \
    && python -m worker --help > /dev/null

USER 10001:10001

EXPOSE 8080

# /healthz answers while the process is alive (readiness is /readyz). No curl in the slim
# image: Python's urllib, which exits non-zero on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${HTTP_PORT:-8080}/healthz', timeout=3)" || exit 1

ENTRYPOINT ["python", "-m", "worker"]
CMD ["run"]
