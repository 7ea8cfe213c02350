"""`retry-failed`: failed debt back to pending with a fresh budget, and cleanup enqueued again."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.support import ainvoke, assert_one_line_error, rows, scalar, seed, truth
from cwlab.fake_openai import FakeOpenAI, Fault


def _cli(config_file: Path, *args: str) -> list[str]:
    return ["--config", str(config_file), *args]


async def _attachments(db: str, ids: list) -> dict:
    found = await rows(
        db,
        "SELECT id, cleanup_status, cleanup_attempts FROM attachments WHERE id = ANY(%s)",
        ([str(i) for i in ids],),
    )
    return {r["id"]: (r["cleanup_status"], r["cleanup_attempts"]) for r in found}


async def test_retry_failed_by_chat_then_all(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    world = await seed(db, fake, chats=2, files_per_chat=2, singles=2)
    chat = world.deleted_chats[0]
    chat_atts = [a for a in world.chat_attachments if a.chat_id == chat.id]
    other_chat_atts = [a for a in world.chat_attachments if a.chat_id != chat.id]
    single = world.single_attachments[0]
    broken = [a.provider_file_id for a in (*chat_atts, *other_chat_atts, single)]
    for file_id in broken:  # the provider refuses them: terminal failure at once
        fake.inject(Fault(status=400, path_contains=file_id))

    first = await ainvoke(_cli(config_file, "drain", "--until-empty", "--json"), env)

    assert first.code == 1, first
    assert first.json()["attachments_failed"] == len(broken) == 5
    assert (await truth(db))["attachments"] == {"failed": 5, "done": 1}
    fake.clear_faults()  # the provider is healthy again

    # One chat: its failed attachments are reset and its cleanup is enqueued once.
    incoming_before = await scalar(db, "SELECT count(*) FROM modkit_outbox_incoming")
    result = await ainvoke(_cli(config_file, "retry-failed", "--chat-id", str(chat.id)), env)

    assert result.code == 0, result
    assert result.stdout.splitlines()[:2] == [
        "reset 2 failed attachment(s); enqueued 1 chat and 0 attachment cleanup message(s)",
        "dead letters: replayed 0 whose cleanup is unfinished, "
        "resolved 0 whose cleanup is already finished",
    ]
    states = await _attachments(db, [a.id for a in chat_atts])
    assert set(states.values()) == {("pending", 0)}
    others = await _attachments(db, [a.id for a in (*other_chat_atts, single)])
    assert {s for s, _ in others.values()} == {"failed"}
    assert await scalar(db, "SELECT count(*) FROM modkit_outbox_incoming") == incoming_before + 1

    drained = await ainvoke(_cli(config_file, "drain", "--until-empty", "--json"), env)
    assert drained.code == 0, drained
    assert set((await _attachments(db, [a.id for a in chat_atts])).values()) == {("done", 0)}

    # Everything else: a chat message for the other deleted chat; the attachment of a chat that
    # is still active is covered by replaying its dead letter (no second message).
    result = await ainvoke(_cli(config_file, "retry-failed", "--all"), env)

    assert result.code == 0, result
    assert result.stdout.splitlines()[:2] == [
        "reset 3 failed attachment(s); enqueued 1 chat and 0 attachment cleanup message(s)",
        "dead letters: replayed 1 whose cleanup is unfinished, "
        "resolved 0 whose cleanup is already finished",
    ]
    drained = await ainvoke(_cli(config_file, "drain", "--until-empty", "--json"), env)
    assert drained.code == 0, drained
    summary = drained.json()
    assert summary["attachments_failed"] == 0
    db_truth = await truth(db)
    assert db_truth["attachments"] == {"done": 6}
    assert db_truth["retries"] == {}
    assert db_truth["unprocessed"] == 0
    assert fake.files == set()
    assert fake.vector_stores == set()

    assert (
        await scalar(db, "SELECT count(*) FROM modkit_outbox_dead_letters WHERE status = 'pending'")
        == 0
    )
    nothing = await ainvoke(_cli(config_file, "retry-failed", "--all"), env)
    assert nothing.stdout.splitlines()[0] == (
        "reset 0 failed attachment(s); enqueued 0 chat and 0 attachment cleanup message(s)"
    )


@pytest.mark.parametrize(
    "flags",
    [[], ["--all", "--chat-id", "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"]],
    ids=["neither", "both"],
)
async def test_retry_failed_needs_exactly_one_scope(
    db: str, config_file: Path, env: dict[str, str | None], flags: list[str]
) -> None:
    await rows(
        db, "SELECT 1"
    )  # the database is reachable: the refusal is about the flags, not the DB
    result = await ainvoke(_cli(config_file, "retry-failed", *flags), env)
    assert_one_line_error(result, "--chat-id", "--all", code=2)
