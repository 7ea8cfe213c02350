"""The harness's own named statements (``bench/queries.sql``, same format as ``sql/queries``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from worker.db.queries import parse_queries


@cache
def _queries() -> dict[str, bytes]:
    source = Path(__file__).with_name("queries.sql").read_text()
    return {name: query.text.encode() for name, query in parse_queries(source).items()}


def q(name: str) -> bytes:
    return _queries()[name]
