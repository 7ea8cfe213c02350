"""Drain and demo progress as a person sees it: on a real terminal (a PTY) a bar redrawn in place
with the work counted up front, a rate and an ETA; without a terminal, plain periodic lines."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.support import (
    REPO,
    arun_subprocess,
    delete_single,
    make_config,
    seed,
    subprocess_env,
    write_config,
)
from cwlab.fake_openai import FakeOpenAI, Fault

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_in_pty(
    args: list[str], env: dict[str, str | None], *, timeout: float = 120, module: bool = True
) -> str:
    """`python -m worker ARGS` (``module=False``: `python ARGS`) with stdin/stdout/stderr on a
    pseudo-terminal; returns all it wrote."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, *(["-m", "worker"] if module else []), *args],
        env=subprocess_env(env),
        cwd=REPO,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) in (0, 1)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    return b"".join(chunks).decode(errors="replace")


IN_CALL_ATTEMPTS = 3  # the provider client's own retries of a 503 within one delivery


def _slow_config(tmp_path: Path, fake: FakeOpenAI) -> Path:
    """Retries 1.2 to 2 seconds apart, so a pass with failing deliveries lasts seconds."""
    extra = {
        "outbox.retry": {"base_seconds": 1.5, "max_seconds": 2, "max_deliveries": 12},
        "cleanup.max_attempts": 8,
    }
    return write_config(tmp_path / "config.yaml", make_config(fake, extra=extra))


def _fail_deliveries(fake: FakeOpenAI, file_id: str, deliveries: int) -> None:
    fake.inject(Fault(status=503, times=deliveries * IN_CALL_ATTEMPTS, path_contains=file_id))


async def test_drain_on_a_terminal_draws_a_bar_with_total_rate_and_eta(
    db: str, fake: FakeOpenAI, tmp_path: Path, env: dict[str, str | None]
) -> None:
    config = _slow_config(tmp_path, fake)
    await seed(db, fake, chats=2, files_per_chat=2, singles=3)
    flaky = (await delete_single(db, fake, 1))[0]
    _fail_deliveries(fake, flaky.provider_file_id, 2)  # two parked retries, ~3 s

    out = run_in_pty(
        ["--config", str(config), "--log-level", "warning", "drain", "--until-empty"], env
    )

    frames = [ANSI.sub("", f).strip() for f in out.split("\r") if "draining [" in f]
    assert len(frames) >= 3, out
    totals = {re.search(r"\d+/(\d+) messages", f).group(1) for f in frames}  # type: ignore[union-attr]
    assert totals == {"6"}, frames  # counted up front: 2 chats + 3 + 1 attachments, never grows
    assert frames[0].startswith("draining ["), frames
    assert "0/6 messages (0%)" in frames[0], frames
    assert "6/6 messages (100%)" in frames[-1], frames
    assert any(re.search(r"\d+\.\d/s", f) for f in frames), frames  # a rate once measured
    assert any(re.search(r"ETA \d+s", f) for f in frames), frames
    assert "parked for retry" in " ".join(frames), frames  # the flaky file waits for its retry
    assert "\x1b[2K" in out  # redrawn in place, not scrolled
    assert "left: 0 outbox messages unprocessed, 0 parked for retry" in out


async def test_drain_without_a_terminal_prints_periodic_plain_lines(
    db: str, fake: FakeOpenAI, tmp_path: Path, env: dict[str, str | None]
) -> None:
    config = _slow_config(tmp_path, fake)
    flaky = await delete_single(db, fake, 2)
    for attachment in flaky:  # four parked retries: over seven seconds before the last succeeds
        _fail_deliveries(fake, attachment.provider_file_id, 4)

    result = await arun_subprocess(
        ["--config", str(config), "--log-level", "warning", "drain", "--until-empty"], env
    )

    assert result.code == 0, result
    lines = result.stderr.splitlines()
    assert lines[0].startswith("draining: 0/2 messages (0%)"), result
    periodic = [line for line in lines if line.startswith("draining: ")]
    assert len(periodic) >= 2, result  # the first at once, then at least one every 5 s
    assert "parked for retry" in " ".join(periodic), result
    assert lines[-1].startswith("drained: 2/2 messages (100%)"), result
    assert "\r" not in result.stderr
    assert "\x1b[" not in result.stderr


async def test_drain_json_prints_no_progress(
    db: str, fake: FakeOpenAI, tmp_path: Path, env: dict[str, str | None]
) -> None:
    await delete_single(db, fake, 1)
    config = _slow_config(tmp_path, fake)
    result = await arun_subprocess(
        ["--config", str(config), "--log-level", "warning", "drain", "--json"], env
    )
    assert result.code == 0, result
    assert result.stderr == "", result
    assert result.json()["remaining_messages"] == 0


@pytest.mark.slow
def test_demo_on_a_terminal_is_never_blank() -> None:
    """Something is on the screen before PostgreSQL starts, then every step, then the bar."""
    env = {k: None for k in os.environ if k.startswith("CLEANUP_WORKER")}
    out = run_in_pty(["demo", "--chats", "4"], env, timeout=180)
    text = ANSI.sub("", out)
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    assert lines[0] == "demo: starting a throwaway PostgreSQL (a few seconds) ...", lines[:5]
    assert lines[1].startswith("demo: PostgreSQL at postgresql://"), lines[:5]
    assert lines[2].startswith("demo: seeding 4 chats"), lines[:5]
    assert lines[3].startswith("demo: draining"), lines[:5]
    assert any(line.startswith("draining [") for line in lines), lines
    assert "Per tenant" in text


def test_pty_helper_sees_a_terminal() -> None:
    """The helper really gives the child a terminal (else the bar tests prove nothing)."""
    code = "import sys; print(sys.stderr.isatty(), sys.stdout.isatty())"
    out = run_in_pty(["-c", code], {}, module=False)
    assert "True True" in out, out
