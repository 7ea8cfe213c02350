"""One-shot queries by DSN, for tests that watch a database other processes work on."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from worker.db.pool import connection_kwargs


async def scalar(dsn: str, query: str, params: Any = None) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, **connection_kwargs()) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        return None if row is None else row[0]


async def rows(dsn: str, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with (
        await psycopg.AsyncConnection.connect(dsn, **connection_kwargs()) as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        await cur.execute(query, params)
        return await cur.fetchall()
