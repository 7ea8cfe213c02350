"""Teaching the log redactor this process's secrets, first thing after the configuration loads.

Every command does this before it can print or log anything (SPEC §6, §13): the passwords of
the DSNs (the worker's and migrate's, whether inline, from the environment or from a file) and
every API key the configuration points at. Kept apart from ``worker.runtime.app`` so that the
CLI can call it without importing the provider SDK.
"""

from __future__ import annotations

import contextlib

from worker.config import Config, KeyUnavailable
from worker.db.pool import dsn_password
from worker.observability.logging import register_secret


def register_secrets(config: Config, environ: dict[str, str]) -> None:
    """Teach the log redactor the DSN passwords and every API key this process can read."""
    for dsn in (config.database.dsn, config.database.migrate_dsn):
        password = dsn_password(dsn) if dsn else None
        if password:
            register_secret(password)
    for source in config.providers.key_sources():
        # An unreadable or empty source is reported by check-config and by the provider layer.
        with contextlib.suppress(KeyUnavailable):
            register_secret(source.text(environ))
