#!/usr/bin/env bash
# The README's first command: the worker doing its real job on an embedded default (a throwaway
# PostgreSQL and a local OpenAI-compatible server). Does all set-up on a fresh machine.
# Extra arguments go to `cleanup-worker demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
python3 -m uv sync --locked --extra demo --no-dev --quiet
exec python3 -m uv run --locked --extra demo --no-dev cleanup-worker demo "$@"
