"""`dead-letters replay/discard --id N`: an id that names no open dead letter is an error (exit 2,
one line), never "discarded 0" with exit 0; and nothing is changed when one id of several is
wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.support import AQ, ainvoke, assert_one_line_error, enqueue_raw, rows


def _cli(config_file: Path, *args: str) -> list[str]:
    return ["--config", str(config_file), *args]


async def _statuses(db: str) -> dict[int, str]:
    found = await rows(db, "SELECT id, status FROM modkit_outbox_dead_letters")
    return {r["id"]: r["status"] for r in found}


@pytest.mark.parametrize("action", ["discard", "replay"])
async def test_unknown_id_is_an_error_and_changes_nothing(
    db: str, config_file: Path, env: dict[str, str | None], action: str
) -> None:
    await enqueue_raw(db, AQ, b"poison")
    assert (await ainvoke(_cli(config_file, "drain"), env)).code == 1
    [known] = await _statuses(db)
    unknown = known + 998

    alone = await ainvoke(_cli(config_file, "dead-letters", action, "--id", str(unknown)), env)
    assert_one_line_error(alone, f"no dead letter with id {unknown}", "dead-letters list")
    assert alone.stdout == ""

    mixed = await ainvoke(
        _cli(config_file, "dead-letters", action, "--id", str(known), "--id", str(unknown)), env
    )
    assert_one_line_error(mixed, f"no dead letter with id {unknown}")
    assert await _statuses(db) == {known: "pending"}


async def test_discarding_twice_says_it_is_already_discarded(
    db: str, config_file: Path, env: dict[str, str | None]
) -> None:
    await enqueue_raw(db, AQ, b"poison")
    assert (await ainvoke(_cli(config_file, "drain"), env)).code == 1
    [known] = await _statuses(db)
    first = await ainvoke(_cli(config_file, "dead-letters", "discard", "--id", str(known)), env)
    assert first.code == 0, first

    again = await ainvoke(_cli(config_file, "dead-letters", "discard", "--id", str(known)), env)

    assert_one_line_error(again, f"dead letter {known} is already discarded")
