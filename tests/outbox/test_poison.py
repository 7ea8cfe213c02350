"""Poison-pill isolation with a handler that really kills its process (SPEC §13, §4.8).

Each run is a fresh OS process (as a restarted pod); the handler SIGKILLs it on the poison
message. The lease the dead process held is expired by the test instead of waiting it out.
"""

from __future__ import annotations

import signal

import pytest

from worker.outbox.enqueue import enqueue

from .helpers import AQ, count, dead_letters, payload, processor_row, rows

MAX_CRASHES = 2


@pytest.mark.slow
async def test_a_message_that_kills_the_process_is_dead_lettered_and_its_neighbours_proceed(
    db, conn, spawn
):
    await conn.execute("CREATE TABLE poison_log (pid INT, seq BIGINT, delivery INT)")
    for n in range(6):
        await enqueue(conn, AQ, 0, payload(n, poison=n == 2))  # seq 3 is the poison pill

    exits = []
    for _ in range(MAX_CRASHES + 3):  # bounded: a pill redelivered forever fails the test
        await conn.execute("TRUNCATE proc_ready")
        process = await spawn("poison", db, "--peers", "1", "--max-crashes", str(MAX_CRASHES))
        _, stderr = await process.communicate()
        exits.append(process.returncode)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
        await conn.execute(  # the dead process's lease runs out
            "UPDATE modkit_outbox_processor SET locked_until = now() - interval '1 second'"
            " WHERE locked_by IS NOT NULL"
        )

    # Killed once in the concurrent batch, then MAX_CRASHES times while handled alone.
    assert exits == [-signal.SIGKILL] * (MAX_CRASHES + 1) + [0]
    [dead] = await dead_letters(conn)
    assert (dead["seq"], dead["partition"]) == (3, 0)
    assert dead["last_error"] == (
        f"handling it killed the worker process {MAX_CRASHES} times"
        f" (outbox.max_handler_crashes = {MAX_CRASHES}); not handled again"
    )
    assert dead["attempts"] == MAX_CRASHES + 1
    assert bytes(dead["payload"]) == payload(2, poison=True)
    handled = await rows(conn, "SELECT DISTINCT seq, delivery FROM poison_log ORDER BY seq")
    # Every neighbour was handled, and never blamed: each is still on its first delivery.
    assert [(r["seq"], r["delivery"]) for r in handled] == [(s, 1) for s in (1, 2, 4, 5, 6)]
    row = await processor_row(conn, AQ, 0)
    assert (row["processed_seq"], row["locked_by"], row["attempts"]) == (6, None, 0)
    assert await count(conn, "cleanup_worker_deliveries") == 0
    assert await count(conn, "cleanup_worker_retries") == 0
