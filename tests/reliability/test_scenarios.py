"""SPEC §11 under load and faults: the small size of every reliability scenario, in CI.

The same code, at full size, produces docs/RELIABILITY.md (``python scripts/reliability.py``).
Each scenario runs real ``cleanup-worker run`` processes against the suite's PostgreSQL and a
local provider, and proves from the database, the provider's request log and the workers'
own output that nothing was lost (see ``scenarios.py`` for what each one asserts).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pgbouncer import PgBouncerUnavailable, via_pgbouncer

from cwlab.postgres import PostgresServer
from reliability.scenarios import SCENARIOS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    "number", sorted(SCENARIOS), ids=[f.__name__ for _, f in sorted(SCENARIOS.items())]
)
async def test_scenario(number: int, pg_server: PostgresServer, tmp_path: Path) -> None:
    if number == 3 and not pg_server.restartable:
        pytest.skip(f"a {pg_server.kind} PostgreSQL cannot be stopped and started here")
    try:
        result = await SCENARIOS[number](pg_server, tmp_path, "small")
    except PgBouncerUnavailable as exc:  # scenario 10; an error when the suite runs through it
        if via_pgbouncer():
            raise
        pytest.skip(f"no PgBouncer: {exc}")
    assert result.figures["lost"] == 0
    print(json.dumps(result.row(), default=str))
