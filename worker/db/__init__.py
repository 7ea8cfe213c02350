"""The data-access layer: the only package that imports psycopg (docs/ARCHITECTURE.md).

``Database`` (``database.py``) hands out connections and transactions whose psycopg errors
become the product's (``pool.translate_errors``: "not usable right now" by SQLSTATE class is
DatabaseUnavailable, a missing table SchemaError, everything else a bug); ``open_connection``
does the same for one-shot commands. Named statements come from ``sql/`` (``queries.q``); the
repositories beside them (``backlog``, ``receipts``, ``reconcile``, ``repair``,
``route_health``, ``migrations``) own their tables' statements. Upper layers annotate with
``Conn`` and ``AsyncConnectionPool`` from here, never from the driver.
"""

from __future__ import annotations

from worker.db.database import (
    AsyncConnectionPool,
    Database,
    check_reachable,
    is_read_only,
    open_connection,
)
from worker.db.pool import Conn

__all__ = [
    "AsyncConnectionPool",
    "Conn",
    "Database",
    "check_reachable",
    "is_read_only",
    "open_connection",
]
