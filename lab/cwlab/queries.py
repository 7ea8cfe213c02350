"""The demo's named statements (``cwlab/sql/*.sql``), parsed like the product's own.

The lab keeps its SQL beside it, in the product's format (``-- name:`` blocks with a doc line),
and reads it with the product's parser; the product never reads these files.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from worker.db.queries import parse_queries


def lab_sql(name: str) -> bytes:
    """A named statement of the lab, as bytes (a trusted query for psycopg)."""
    return _statements()[name]


@cache
def _statements() -> dict[str, bytes]:
    statements: dict[str, bytes] = {}
    for path in sorted((Path(__file__).parent / "sql").glob("*.sql")):
        for name, query in parse_queries(path.read_text()).items():
            if name in statements:
                raise ValueError(f"lab query {name!r} defined twice (second in {path.name})")
            statements[name] = query.text.encode()
    return statements
