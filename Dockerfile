# syntax=docker/dockerfile:1
# cleanup-worker image. Build:  docker build -t cleanup-worker:0.1.0 .
#   --build-arg BASE_IMAGE=<registry mirror>/python:3.11-slim-bookworm   (air-gapped registries)
# Both stages use the same base: the virtualenv's interpreter symlink points at the base's
# python, so the runtime stage must have the very same one.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- builder: resolve the locked dependencies and the project into /opt/venv --------------
FROM ${BASE_IMAGE} AS builder

ARG UV_VERSION=0.13.9
# uv from PyPI, inside its own venv (works on images whose system python is
# "externally managed" too).
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"

ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

WORKDIR /src
# Dependencies first (the layer is reused until uv.lock changes), then the project itself,
# installed as a wheel (--no-editable): /opt/venv is then self-contained, sql/ included.
# lab/pyproject.toml: uv reads the workspace from it; the lab itself (throwaway PostgreSQL,
# fake provider, demo world) is only installed with the demo extra, so the image has none of it.
COPY pyproject.toml uv.lock ./
COPY lab/pyproject.toml ./lab/
RUN /opt/uv/bin/uv sync --locked --no-dev --no-install-project --no-editable
COPY README.md ./
COPY sql ./sql
COPY worker ./worker
RUN /opt/uv/bin/uv sync --locked --no-dev --no-editable \
    && /opt/venv/bin/cleanup-worker --help > /dev/null \
    && ! /opt/venv/bin/python -c "import cwlab" 2> /dev/null

# --- runtime: the base image + /opt/venv, nothing else ------------------------------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="cleanup-worker" \
      org.opencontainers.image.description="Deletes OpenAI / Azure OpenAI files and vector stores of soft-deleted chats (PostgreSQL outbox worker)" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid (Kubernetes runAsNonRoot can only verify a numeric USER).
RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /tmp --shell /usr/sbin/nologin worker

COPY --from=builder /opt/venv /opt/venv

# Read-only root filesystem: the .pyc files were compiled in the builder, nothing writes
# bytecode at run time, and the only writable place is /tmp (an emptyDir in Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp

USER 10001:10001
WORKDIR /tmp
EXPOSE 9464

# Exec form, no shell and no init: the worker is PID 1 and receives SIGTERM itself. It
# installs its own SIGTERM/SIGINT handlers (stop leasing, finish or release in-flight work
# within outbox.shutdown_grace_seconds, exit 0) and starts no child processes, so there are no
# zombies to reap and tini would add nothing. (Before those handlers are installed a PID 1
# ignores SIGTERM; Kubernetes then kills it after terminationGracePeriodSeconds, losing
# nothing: leases expire.) `docker run --init` is fine for ad-hoc use.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/venv/bin/cleanup-worker"]
CMD ["run"]
# No HEALTHCHECK: Kubernetes ignores it (probes in deploy/base/deployment.yaml use
# /healthz and /readyz on port 9464), and the slim base has no curl to run one.
