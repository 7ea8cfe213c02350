"""Stoplight Prism serving OpenAI's own API description, started by the test suite itself.

Prism (npm ``@stoplight/prism-cli``, pinned with ``package-lock.json`` next to this file) is
installed with ``npm ci`` into a cache directory on first use, the way ``scripts/check-deploy.sh``
installs its npm tools, and reused while the lock file and the Node version stay the same.
The tests skip (with the reason) only where ``node`` / ``npm`` are not installed; a failing
install is an error, not a skip.

The description is ``tests/fixtures/openai-openapi-deletes.json``: OpenAI's published document
trimmed to the delete endpoints (copied from ``../shared/reference/``). Its only 404 example is
generic (``No such File object``, no id); the fixture serves a copy with named examples added
(``live_file_not_found`` / ``live_vector_store_not_found``: the bodies api.openai.com sends;
``invalid_url``)
so that ``Prefer: code=404, example=NAME`` picks one. Nothing else is changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "fixtures" / "openai-openapi-deletes.json"
START_TIMEOUT_SECONDS = 60.0
INSTALL_TIMEOUT_SECONDS = 600

# The file id the added "live" examples name; the tests delete exactly this id.
LIVE_FILE_ID = "file-abc123"
LIVE_VECTOR_STORE_ID = "vs_abc123"
EXTRA_404_EXAMPLES: dict[str, dict[str, Any]] = {
    "live_file_not_found": {
        "error": {
            "message": f"No such File object: {LIVE_FILE_ID}",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
    },
    "live_vector_store_not_found": {
        "error": {
            "message": f"No vector store found with id '{LIVE_VECTOR_STORE_ID}'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    },
    "invalid_url": {
        "error": {
            "message": f"Invalid URL (DELETE /files/{LIVE_FILE_ID})",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    },
}


def _cache_root() -> Path:
    explicit = os.environ.get("CLEANUP_WORKER_PRISM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cleanup-worker" / "prism"


def _install_prism() -> Path:
    """``node_modules/.bin/prism`` from ``npm ci`` of the pinned lock file (cached)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the Prism contract tests need Node 18+")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    files = [HERE / "package.json", HERE / "package-lock.json"]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    target = _cache_root() / f"{digest}-{node.stdout.strip()}"
    prism = target / "node_modules" / ".bin" / "prism"
    if prism.exists():
        return prism
    staging = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file in files:
        shutil.copy(file, staging / file.name)
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=staging,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
        env={**os.environ, "NPM_CONFIG_UPDATE_NOTIFIER": "false"},
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"npm ci of tests/contract/package-lock.json failed:\n{done.stderr[-2000:]}")
    try:
        staging.rename(target)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return prism


def _spec_with_examples(directory: Path) -> Path:
    """The description with the named 404 examples added beside the document's own."""
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    for path_item in spec["paths"].values():
        media = path_item["delete"]["responses"]["404"]["content"]["application/json"]
        document_example = media.pop("example")
        media["examples"] = {
            "document": {"value": document_example},
            **{name: {"value": body} for name, body in EXTRA_404_EXAMPLES.items()},
        }
    out = directory / "openai-openapi-deletes.with-examples.json"
    out.write_text(json.dumps(spec), encoding="utf-8")
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_listening(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prism exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            httpx2.delete(f"{url}/v1/files/probe", headers={"Authorization": "Bearer x"})
            return
        except httpx2.TransportError:
            time.sleep(0.2)
    pytest.fail(
        f"prism did not listen within {START_TIMEOUT_SECONDS:g}s:\n{log.read_text()[-2000:]}"
    )


@pytest.fixture(scope="session")
def prism_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of ``prism mock --errors`` (request violations are errors)."""
    prism = _install_prism()
    directory = tmp_path_factory.mktemp("prism")
    spec = _spec_with_examples(directory)
    port = _free_port()
    log = directory / "prism.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(prism), "mock", "--host", "127.0.0.1", "--port", str(port), "--errors", str(spec)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_listening(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
