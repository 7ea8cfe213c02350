"""Fixtures of the engine tests."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

PROCS = Path(__file__).with_name("_procs.py")

Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
async def spawn(conn) -> AsyncIterator[Spawn]:
    """Start ``_procs.py`` in another OS process (killed at teardown if still running)."""
    await conn.execute("CREATE TABLE proc_ready (pid INT NOT NULL)")
    await conn.execute("CREATE TABLE proc_stop (flag INT)")
    started: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(PROCS), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()
