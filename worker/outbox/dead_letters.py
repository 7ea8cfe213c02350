"""Dead letters for operators (SPEC §4.6): list, replay (re-enqueue), discard.

Lifecycle of the original table: pending -> reprocessing (replayed) -> resolved when the
re-enqueued message succeeds, or back to pending (attempts + 1) when it is rejected again;
pending -> discarded by an operator. Replay never processes inline: the message goes back on
its own partition and the normal workers handle it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from worker.db import Conn
from worker.db.queries import q

# A replayed message that has not resolved within this time can be replayed again.
REPLAY_DEADLINE_SECONDS = 24 * 3600.0
STATUSES = ("pending", "reprocessing", "resolved", "discarded")


@dataclass(frozen=True)
class DeadLetter:
    id: int
    queue: str
    partition: int
    seq: int
    payload: bytes
    payload_type: str
    created_at: datetime
    failed_at: datetime
    last_error: str | None
    attempts: int
    status: str
    completed_at: datetime | None
    deadline: datetime | None


@dataclass(frozen=True)
class Filter:
    queue: str | None = None
    status: str | None = None
    ids: Sequence[int] | None = None
    limit: int = 100

    def params(self) -> dict[str, object]:
        ids = list(self.ids) if self.ids else None
        return {"queue": self.queue, "status": self.status, "ids": ids, "limit": self.limit}


async def list_dead_letters(conn: Conn, where: Filter) -> list[DeadLetter]:
    cur = await conn.execute(q("list_dead_letters"), where.params())
    return [DeadLetter(*row) for row in await cur.fetchall()]


async def replay(conn: Conn, where: Filter) -> list[int]:
    """Re-enqueue pending dead letters matching ``where``; returns the ids replayed."""
    params = where.params() | {"timeout_seconds": REPLAY_DEADLINE_SECONDS}
    async with conn.transaction():
        cur = await conn.execute(q("claim_dead_letters_for_replay"), params)
        ids = [row[0] for row in await cur.fetchall()]
        for dead_letter_id in ids:
            await conn.execute(q("reenqueue_dead_letter"), {"id": dead_letter_id})
    return sorted(ids)


async def discard(conn: Conn, where: Filter) -> list[int]:
    """Mark pending dead letters matching ``where`` as discarded; returns their ids."""
    cur = await conn.execute(q("discard_dead_letters"), where.params())
    return sorted(row[0] for row in await cur.fetchall())
