"""How the daemon takes SIGTERM/SIGINT: the first stops leasing; a later one exits at once; a
repeat within DUPLICATE_SIGNAL_SECONDS changes nothing; once the loops have stopped the process
ignores both signals.
The process-level scenarios are in tests/cli/test_daemon.py; these pin the rule itself."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator

import pytest

from worker.config import Config, DatabaseConfig
from worker.runtime import daemon as daemon_module
from worker.runtime.app import open_app
from worker.runtime.daemon import Daemon


class Exited(Exception):
    pass


@pytest.fixture
async def daemon(db: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Daemon]:
    def exit_now(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(daemon_module.os, "_exit", exit_now)
    config = Config(database=DatabaseConfig(dsn=db, pool_min_size=1, pool_max_size=4))
    async with open_app(config, environ={}) as app:
        yield Daemon(app)


async def test_a_repeat_within_the_window_is_the_same_request(daemon: Daemon) -> None:
    daemon.stop()
    daemon.stop()
    assert daemon.stopping.is_set()


async def test_a_second_signal_after_the_window_exits_at_once(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "DUPLICATE_SIGNAL_SECONDS", 0.0)
    daemon.stop()
    with pytest.raises(Exited, match="1"):
        daemon.stop()


@pytest.fixture
def restored_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restored_signals")
async def test_once_the_loops_stopped_the_process_ignores_signals(daemon: Daemon) -> None:
    """Ignored by the process, not by a handler of the event loop, which closing the loop
    would replace with the default (which kills)."""
    daemon.stop()
    await daemon._run_loops()  # stopping is set: every loop ends at once
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
