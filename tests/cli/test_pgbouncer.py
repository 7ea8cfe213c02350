"""Through PgBouncer in transaction pooling mode (Debian's 1.18, no prepared-statement support):
`run` and `drain` work as they do directly (SPEC §13, issue 12).

These start from the ``pgbouncer`` fixture in any mode, so that the defect stays covered even
when the suite runs direct. Seen before the fix: `run` crash-looped with
``DuplicatePreparedStatement: prepared statement "_pg3_0" already exists`` and `drain` ended
with a traceback, rows left pending.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from pgbouncer import PgBouncer
from psycopg.conninfo import conninfo_to_dict

from cli.support import (
    DaemonProcess,
    arun_subprocess,
    base_env,
    cursors_at_end,
    delete_single,
    free_port,
    make_config,
    seed,
    truth,
    wait_for,
    write_config,
)
from cwlab.fake_openai import FakeOpenAI
from worker.db.pool import connect, open_pool

pytestmark = pytest.mark.slow


@pytest.fixture
def bounced(db: str, pgbouncer: PgBouncer) -> str:
    """The test database, reached through PgBouncer whatever mode the suite runs in."""
    return pgbouncer.dsn(str(conninfo_to_dict(db)["dbname"]))


async def test_pool_and_single_connections_repeat_statements_through_pgbouncer(
    bounced: str,
) -> None:
    """Several clients sharing PgBouncer's server connections, each repeating a statement more
    often than psycopg's automatic prepare threshold (5)."""
    query = b"SELECT count(*) FROM modkit_outbox_partitions WHERE queue <> %s"
    async with open_pool(bounced, min_size=4, max_size=4) as pool:

        async def repeat() -> None:
            for _ in range(12):
                async with pool.connection() as conn:
                    await conn.execute(query, ("x",))

        await asyncio.gather(*(repeat() for _ in range(4)))
    singles = [await connect(bounced) for _ in range(3)]
    try:
        for _ in range(8):
            for conn in singles:
                await conn.execute(query, ("y",))
    finally:
        for conn in singles:
            await conn.close()


async def test_drain_through_pgbouncer(bounced: str, fake: FakeOpenAI, tmp_path: Path) -> None:
    world = await seed(bounced, fake, chats=10, files_per_chat=3, singles=40)
    config = write_config(tmp_path / "config.yaml", make_config(fake))

    result = await arun_subprocess(["--config", str(config), "drain", "--json"], base_env(bounced))

    assert result.code == 0, result
    assert "Traceback" not in result.stderr, result
    assert (await truth(bounced))["attachments"] == {"done": len(world.files)}
    assert await cursors_at_end(bounced)


async def test_run_through_pgbouncer(bounced: str, fake: FakeOpenAI, tmp_path: Path) -> None:
    """The daemon handles a stream of work and stops cleanly; no crash, no restart."""
    config = write_config(tmp_path / "config.yaml", make_config(fake))
    port = free_port()
    env = {**base_env(bounced), "CLEANUP_WORKER__OBSERVABILITY__HTTP_PORT": str(port)}
    daemon = DaemonProcess(["--config", str(config)], env, tmp_path / "daemon.log")
    try:
        made = []
        for _ in range(4):  # work arriving while it runs, past the prepare threshold
            made += await delete_single(bounced, fake, 5)
            await asyncio.sleep(0.5)

        async def all_done() -> bool:
            assert daemon.running, daemon.tail()
            return (await truth(bounced))["attachments"] == {"done": len(made)}

        await wait_for(all_done, within=60, what="every attachment cleaned through PgBouncer")
        daemon.send(signal.SIGTERM)
        assert await daemon.wait(within=20) == 0, daemon.tail()
        events = [e.get("event") for e in daemon.events()]
    finally:
        daemon.kill()
    assert "loop_crashed" not in events, daemon.tail()
    assert "database_unavailable" not in events, daemon.tail()
    assert await cursors_at_end(bounced)
