"""Passwords out of DSNs and URLs, and libpq's verdict on a DSN: the configuration's only
contact with the database driver (``conninfo_to_dict`` parses, it never connects)."""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

# scheme://user:SECRET@host: greedy to the token's last '@' (over-redacting is the safe side).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/?#@\s]*:)\S*@")
# The password of a URI's userinfo (group 2), for masking it in libpq's parse errors.
_URL_USERINFO_PASSWORD = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://[^:/?#@\s]*:)([^@/]*)@")
# conninfo `password='a b'`, query `?password=x`, `PGPASSWORD=x`, YAML/JSON `"password": "x"`.
_KV_PASSWORD = re.compile(
    r"""(?i)(password["']?\s*[=:]\s*)("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s&;,}]+)"""
)


def redact_passwords(text: str) -> str:
    """Replace passwords in DSNs, URLs and conninfo strings found in ``text`` with ``***``."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def dsn_problem(dsn: str) -> str | None:
    """libpq's reason for rejecting ``dsn`` (its password masked), or None if it parses."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot be parsed"
        password = _URL_USERINFO_PASSWORD.search(dsn) or _KV_PASSWORD.search(dsn)
        if password and password.group(2):
            reason = reason.replace(password.group(2), "***")
        return redact_passwords(reason)
    return None
