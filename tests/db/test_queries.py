"""The named-SQL parser (worker/db/queries.py) and the files it reads: every statement has
exactly one name, every name one statement, and every name the code asks for exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from worker.db.queries import parse_queries, queries, sql_dir

ROOT = Path(__file__).resolve().parents[2]
CODE = [*sorted((ROOT / "worker").rglob("*.py")), *sorted((ROOT / "lab").rglob("*.py"))]


def test_blocks_are_split_by_name_with_their_doc_line() -> None:
    parsed = parse_queries(
        "-- preamble: what this file holds\n\n"
        "-- name: first\n-- Says what it is for.\n-- a second comment line\nSELECT 1;\n\n"
        "-- name: second\n-- Another one.\nSELECT %(x)s\nFROM t;\n"
    )
    assert list(parsed) == ["first", "second"]
    assert parsed["first"].doc == "Says what it is for."
    assert parsed["first"].text == "SELECT 1"
    assert parsed["second"].text == "SELECT %(x)s\nFROM t"


def test_a_duplicate_name_is_refused() -> None:
    with pytest.raises(ValueError, match="duplicate query name 'twice'"):
        parse_queries("-- name: twice\nSELECT 1;\n-- name: twice\nSELECT 2;\n")


def test_a_name_without_a_statement_is_refused() -> None:
    with pytest.raises(ValueError, match="query 'empty' has no statement"):
        parse_queries("-- name: empty\n-- Only a doc line.\n\n-- name: next\nSELECT 1;\n")


def test_a_statement_without_a_name_is_refused() -> None:
    """Text before the first name may only be comments: a statement there would be dropped."""
    with pytest.raises(ValueError, match="statement before the first"):
        parse_queries("-- file comment\nDELETE FROM t;\n-- name: later\nSELECT 1;\n")


@pytest.mark.parametrize(
    "line", ["-- name:first", "-- name: First", "-- name: bad-name", "--name: first"]
)
def test_a_malformed_name_line_is_refused(line: str) -> None:
    """Otherwise the next statement silently joins the previous query: two statements, one name."""
    with pytest.raises(ValueError, match="malformed name line"):
        parse_queries(f"-- name: before\nSELECT 1;\n{line}\nSELECT 2;\n")


def test_every_file_parses_and_every_query_says_what_it_is_for() -> None:
    loaded = queries()
    assert loaded, f"no named queries under {sql_dir() / 'queries'}"
    undocumented = sorted(name for name, query in loaded.items() if not query.doc)
    assert not undocumented


def _direct_names() -> dict[str, str]:
    """``q("name")`` calls with a literal name in the product and the lab -> where."""
    found: dict[str, str] = {}
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "q"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found[node.args[0].value] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return found


def _string_literals() -> set[str]:
    return {
        node.value
        for path in CODE
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_every_name_the_code_asks_for_exists() -> None:
    direct = _direct_names()
    assert len(direct) > 10, "the scan found the q() calls"
    missing = {name: where for name, where in direct.items() if name not in queries()}
    assert not missing


def test_every_query_is_used() -> None:
    """No dead SQL: each name appears as a string in the code (directly in q() or handed to a
    helper that calls q(), as route_health and the repositories do)."""
    unused = sorted(set(queries()) - _string_literals())
    assert not unused


def test_the_lab_keeps_its_own_statements_each_named_documented_and_used() -> None:
    """The demo's SQL lives in lab/cwlab/sql (the product never reads it), in the same format."""
    lab = {}
    for path in sorted((ROOT / "lab" / "cwlab" / "sql").glob("*.sql")):
        lab.update(parse_queries(path.read_text()))
    assert lab, "the lab's statements were found"
    assert not sorted(name for name, query in lab.items() if not query.doc)
    assert not sorted(set(lab) - _string_literals())
    assert not sorted(set(lab) & set(queries())), "a lab name shadows a product query"
