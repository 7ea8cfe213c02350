"""Durations (``24h``, ``30d``) and points in time (ISO 8601 or a duration ago) from the CLI."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from worker.errors import UsageError

_DURATION = re.compile(r"(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, *, option: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``30d``, ``2w``; a clear one-line error naming ``option``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise UsageError(
            f"{option}: {text!r} is not a duration; use a number and a unit s, m, h, d or w "
            "(e.g. 24h, 30d)"
        )
    return timedelta(seconds=float(match["amount"]) * _UNITS[match["unit"]])


def parse_since(text: str, *, option: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when it names no zone), or a duration meaning that long ago."""
    if _DURATION.fullmatch(text.strip().lower()):
        return (now or datetime.now(UTC)) - parse_duration(text, option=option)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option}: {text!r} is neither an ISO time (2026-01-31T12:00:00Z) nor a duration "
            "(24h, 30d)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
