"""PostgreSQL access: named queries from ``sql/``, the pool, migrations.

The one place psycopg's connection errors are translated (``pool.translate_errors``).
"""

from __future__ import annotations

from typing import TypeAlias

import psycopg
from psycopg.rows import TupleRow

Conn: TypeAlias = psycopg.AsyncConnection[TupleRow]
