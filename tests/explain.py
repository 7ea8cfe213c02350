"""Reading PostgreSQL's plan of a named statement, for the tests that keep hot statements on
their indexes (``EXPLAIN`` only: nothing is executed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg

from worker.db.queries import q


async def plan_of(conn: psycopg.AsyncConnection, name: str, params: dict[str, Any]) -> dict:
    """The top plan node of ``EXPLAIN (FORMAT JSON)`` of the named statement."""
    cur = await conn.execute(b"EXPLAIN (FORMAT JSON) " + q(name), params)
    row = await cur.fetchone()
    assert row is not None
    plan = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return dict(plan[0]["Plan"])


def nodes(plan: dict) -> Iterator[dict]:
    """Every node of a plan, the top one first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)
