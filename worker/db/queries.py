"""Named SQL statements, loaded once from ``sql/queries/*.sql``.

Keeping SQL in files (Procrastinate's way) makes every statement reviewable as SQL and keeps
the Python short. A block starts with ``-- name: <name>`` and its first comment line says what it
is for; parameters are psycopg ``%(name)s`` placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_NAME = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
# Anything that looks like an attempt at a name line; a near miss must not pass as a comment
# (the statement after it would join the previous query: two statements under one name).
_NAME_LIKE = re.compile(r"^--\s*name\b.*$", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Query:
    name: str
    doc: str
    text: str


def sql_dir() -> Path:
    """``sql/`` inside the installed wheel, else at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "sql", package.parent / "sql"):
        if (candidate / "schema").is_dir():
            return candidate
    raise FileNotFoundError(f"sql/ directory not found next to {package}")


def parse_queries(source: str) -> dict[str, Query]:
    """Split a file into named blocks; before the first name only comments (the preamble)."""
    queries: dict[str, Query] = {}
    for line in _NAME_LIKE.findall(source):
        if not _NAME.fullmatch(line):
            raise ValueError(f"malformed name line {line!r}: expected '-- name: lower_snake_case'")
    matches = list(_NAME.finditer(source))
    preamble = source[: matches[0].start()] if matches else source
    if any(ln.strip() and not ln.lstrip().startswith("--") for ln in preamble.splitlines()):
        raise ValueError("statement before the first '-- name:' line: every statement needs one")
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(source)
        body_lines = source[match.end() : end].strip().splitlines()
        doc_lines = [ln for ln in body_lines if ln.startswith("--")]
        doc = doc_lines[0].removeprefix("--").strip() if doc_lines else ""
        text = "\n".join(ln for ln in body_lines if not ln.startswith("--")).strip()
        name = match["name"]
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        if not text:
            raise ValueError(f"query {name!r} has no statement")
        queries[name] = Query(name=name, doc=doc, text=text.rstrip(";"))
    return queries


@cache
def queries() -> dict[str, Query]:
    """Every named query of every file under ``sql/queries``."""
    merged: dict[str, Query] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        for name, query in parse_queries(path.read_text()).items():
            if name in merged:
                raise ValueError(f"query {name!r} defined twice (second in {path.name})")
            merged[name] = query
    return merged


def q(name: str) -> bytes:
    """A named statement, as bytes: psycopg takes bytes as a trusted query (no LiteralString)."""
    return _encoded()[name]


@cache
def _encoded() -> dict[str, bytes]:
    return {name: query.text.encode() for name, query in queries().items()}
