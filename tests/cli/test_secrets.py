"""Secrets never reach output: the DSN password and API keys, in logs (JSON, debug), command
output, probe bodies and error lines, on success and error paths alike (SPEC §6, §9)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from cli.support import (
    API_KEY,
    AQ,
    DSN_PASSWORD,
    DaemonProcess,
    ahttp_get,
    ainvoke,
    arun_subprocess,
    assert_secret_free,
    base_env,
    enqueue_raw,
    free_port,
    make_config,
    seed,
    truth,
    wait_for,
    write_config,
)
from cwlab.fake_openai import FakeOpenAI, Fault

ROLE = "cw_secret"
LOGS = ["--log-format", "json", "--log-level", "debug"]


@pytest.fixture
def secret_dsn(role_dsn: Callable[..., str], db: str) -> str:
    """The test database, reached as a role whose password is in the DSN."""
    dsn = role_dsn(db, ROLE, DSN_PASSWORD, "SUPERUSER")
    assert DSN_PASSWORD in dsn
    return dsn


def _unreachable_dsn_with_password() -> str:
    return (
        f"postgresql://{ROLE}:{quote(DSN_PASSWORD)}@/cw"
        "?host=/nonexistent/cleanup-worker-sock&port=5432"
    )


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every log line is one JSON object


@pytest.mark.slow
async def test_drain_and_run_never_print_secrets(
    secret_dsn: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    world = await seed(secret_dsn, fake, chats=1, singles=3)
    fake.inject(Fault(status=400, path_contains=world.single_attachments[0].provider_file_id))
    fake.inject(Fault(status=503, path_contains=world.single_attachments[1].provider_file_id))
    await enqueue_raw(secret_dsn, AQ, b"poison")
    config = write_config(tmp_path / "config.yaml", make_config(fake))
    env = base_env(secret_dsn)

    drained = await arun_subprocess(["--config", str(config), *LOGS, "drain", "--json"], env)

    assert drained.code == 1, drained
    assert drained.json()["attachments_failed"] == 1
    events = _json_lines(drained.stderr)
    assert any(e["event"] == "message_handled" and e["outcome"] == "retry" for e in events)
    assert_secret_free(drained.stdout, drained.stderr)
    assert any(r.api_key == API_KEY for r in fake.requests())  # the key was really used
    checked = await ainvoke(["--config", str(config), "check-config"], env)
    assert checked.code == 0, checked
    [where] = [line for line in checked.stdout.splitlines() if "reachable" in line]
    assert f"user={ROLE}" in where  # the DSN with the password was used ...
    assert "password=***" in where  # ... and is shown masked
    assert_secret_free(checked.stdout, checked.stderr)

    fake.clear_faults()
    port = free_port()
    daemon = DaemonProcess(
        ["--config", str(config), *LOGS],
        {**env, "CLEANUP_WORKER__OBSERVABILITY__HTTP_PORT": str(port)},
        tmp_path / "daemon.log",
    )
    try:

        async def settled() -> bool:
            return (await truth(secret_dsn))["retries"] == {}

        await wait_for(settled, within=40, what="the parked retry to be handled")
        bodies = [(await ahttp_get(port, path))[1] for path in ("/metrics", "/readyz", "/healthz")]
        daemon.send(signal.SIGTERM)
        assert await daemon.wait(within=20) == 0
        output = daemon.output()
    finally:
        daemon.kill()
    assert_secret_free(output, *bodies)
    events = _json_lines(output)
    assert "worker_started" in [e["event"] for e in events]


async def test_error_paths_never_print_secrets(config_file: Path, tmp_path: Path) -> None:
    unreachable = _unreachable_dsn_with_password()
    assert conninfo_to_dict(unreachable)["password"] == DSN_PASSWORD
    env = base_env(unreachable)

    for args in (["drain"], ["status", "--json"], ["dead-letters", "list"], ["migrate"]):
        result = await ainvoke(["--config", str(config_file), *LOGS, *args], env)
        assert result.code == 3, result
        assert_secret_free(result.stdout, result.stderr)

    checked = await ainvoke(["--config", str(config_file), "check-config"], env)
    assert checked.code == 3, checked  # database unreachable
    assert f"{ROLE}:***@" in checked.stdout  # where it looked, password masked
    assert_secret_free(checked.stdout, checked.stderr)

    as_process = await arun_subprocess(["--config", str(config_file), *LOGS, "drain"], env)
    assert as_process.code == 3, as_process
    assert_secret_free(as_process.stdout, as_process.stderr)

    bad_value = await ainvoke(
        ["--config", str(config_file), "status"],
        base_env(f"mysql://{ROLE}:{DSN_PASSWORD}@db.example/cw"),
    )
    assert bad_value.code == 2, bad_value
    assert "database.dsn" in bad_value.stderr
    assert_secret_free(bad_value.stdout, bad_value.stderr)


@pytest.mark.slow
async def test_daemon_without_database_never_prints_secrets(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """`run` with the database unreachable: waits (not ready), logs the outage, no password."""
    config = write_config(tmp_path / "config.yaml", make_config(fake))
    port = free_port()
    env = base_env(_unreachable_dsn_with_password())
    daemon = DaemonProcess(
        ["--config", str(config), *LOGS],
        {**env, "CLEANUP_WORKER__OBSERVABILITY__HTTP_PORT": str(port)},
        tmp_path / "daemon.log",
    )
    try:

        async def not_ready() -> str | None:
            assert daemon.running, daemon.tail()
            code, body = await ahttp_get(port, "/readyz")
            return body if code == 503 else None

        body = await wait_for(not_ready, within=30, what="/readyz 503")
        assert "database unavailable" in body
        assert (await ahttp_get(port, "/healthz"))[0] == 200

        async def logged() -> bool:
            return "database_unavailable" in daemon.output()

        await wait_for(logged, within=20, what="the outage to be logged")
        daemon.send(signal.SIGTERM)
        assert await daemon.wait(within=20) == 0
        output = daemon.output()
    finally:
        daemon.kill()
    assert_secret_free(output, body)
