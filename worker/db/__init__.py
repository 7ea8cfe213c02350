"""PostgreSQL access: named queries from ``sql/``, the pool, migrations.

The one place psycopg's errors are classified and translated (``pool.translate_errors``):
"not usable right now" (by SQLSTATE class) is DatabaseUnavailable, everything else a bug.
"""

from __future__ import annotations

from typing import TypeAlias

import psycopg
from psycopg.rows import TupleRow

Conn: TypeAlias = psycopg.AsyncConnection[TupleRow]
