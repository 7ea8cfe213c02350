"""`dead-letters list / replay / discard`: the operator's loop over poison messages."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from factories import create_attachment, create_chat

from cli.support import (
    AQ,
    CQ,
    QUEUES,
    ainvoke,
    assert_one_line_error,
    enqueue_raw,
    rows,
    scalar,
)
from cwlab.fake_openai import FakeOpenAI
from worker import producer
from worker.db.pool import connection_kwargs

DEAD_LETTER_KEYS = {
    "id", "queue", "partition", "seq", "payload", "payload_type", "created_at", "failed_at",
    "last_error", "attempts", "status", "completed_at", "deadline",
}  # fmt: skip


def _cli(config_file: Path, *args: str) -> list[str]:
    return ["--config", str(config_file), *args]


async def _dead_letter(db: str, dead_letter_id: int) -> dict:
    [row] = await rows(
        db, "SELECT * FROM modkit_outbox_dead_letters WHERE id = %s", (dead_letter_id,)
    )
    return row


async def test_list_shapes(db: str, config_file: Path, env: dict[str, str | None]) -> None:
    await enqueue_raw(db, AQ, b"not json at all")
    await enqueue_raw(db, CQ, b'{"reason": "chat_soft_delete"}', partition=2)
    assert (await ainvoke(_cli(config_file, "drain"), env)).code == 1

    result = await ainvoke(_cli(config_file, "dead-letters", "list", "--json"), env)

    assert result.code == 0, result
    listed = result.json()
    assert len(listed) == 2
    for entry in listed:
        assert set(entry) == DEAD_LETTER_KEYS
        assert entry["status"] == "pending"
        assert entry["attempts"] >= 1
        assert entry["last_error"]
    by_queue = {e["queue"]: e for e in listed}
    assert by_queue[AQ]["payload"] == "not json at all"  # not JSON: shown as text
    assert by_queue[CQ]["payload"] == {"reason": "chat_soft_delete"}  # JSON: shown as JSON
    assert by_queue[CQ]["partition"] == 2
    assert by_queue[CQ]["payload_type"] == "application/json"

    only_cq = await ainvoke(_cli(config_file, "dead-letters", "list", "--queue", CQ, "--json"), env)
    assert [e["id"] for e in only_cq.json()] == [by_queue[CQ]["id"]]
    by_id = await ainvoke(
        _cli(config_file, "dead-letters", "list", "--id", str(by_queue[AQ]["id"]), "--json"), env
    )
    assert [e["queue"] for e in by_id.json()] == [AQ]
    limited = await ainvoke(
        _cli(config_file, "dead-letters", "list", "--limit", "1", "--json"), env
    )
    assert len(limited.json()) == 1
    none = await ainvoke(_cli(config_file, "dead-letters", "list", "--status", "resolved"), env)
    assert none.stdout.strip() == "no dead letters match"

    human = await ainvoke(_cli(config_file, "dead-letters", "list"), env)
    assert human.code == 0, human
    lines = human.stdout.splitlines()
    assert lines[0].split() == [
        "id", "queue", "partition", "seq", "status", "attempts", "failed_at", "last_error",
    ]  # fmt: skip
    assert len(lines) == 3


async def test_replay_round_trip(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    """A chat-cleanup event for a chat that is not deleted is rejected; once the chat service
    fixes the row, the operator replays it and the dead letter ends resolved."""
    async with await psycopg.AsyncConnection.connect(db, **connection_kwargs()) as conn:
        chat = await create_chat(conn, uuid.uuid4())
        att = await create_attachment(conn, chat.id, chat.tenant_id)
        fake.add_file(att.provider_file_id)
        await producer.enqueue_chat_cleanup(conn, QUEUES, tenant_id=chat.tenant_id, chat_id=chat.id)
    drained = await ainvoke(_cli(config_file, "drain", "--json"), env)
    assert drained.code == 1, drained
    [entry] = (await ainvoke(_cli(config_file, "dead-letters", "list", "--json"), env)).json()
    assert entry["queue"] == CQ
    assert entry["payload"]["chat_id"] == str(chat.id)
    dead_id = entry["id"]

    # The fix: the chat is really deleted now (the chat service's soft-delete, minus the event).
    async with await psycopg.AsyncConnection.connect(db, **connection_kwargs()) as conn:
        await conn.execute("UPDATE chats SET deleted_at = now() WHERE id = %s", (chat.id,))
        await conn.execute(
            "UPDATE attachments SET cleanup_status = 'pending' WHERE chat_id = %s", (chat.id,)
        )

    replayed = await ainvoke(_cli(config_file, "dead-letters", "replay", "--id", str(dead_id)), env)
    assert replayed.code == 0, replayed
    assert replayed.stdout.strip() == f"replayed 1 dead letter(s): {dead_id}"
    assert (await _dead_letter(db, dead_id))["status"] == "reprocessing"
    again = await ainvoke(_cli(config_file, "dead-letters", "replay", "--id", str(dead_id)), env)
    assert again.stdout.strip() == "replayed 0 dead letter(s)"  # not replayed twice

    drained = await ainvoke(_cli(config_file, "drain", "--json"), env)

    assert drained.code == 0, drained  # a replay that succeeds is no new failure
    assert drained.json()["queues"][CQ]["done"] == 1
    row = await _dead_letter(db, dead_id)
    assert row["status"] == "resolved"
    assert row["completed_at"] is not None
    assert await scalar(db, "SELECT count(*) FROM modkit_outbox_dead_letters") == 1
    assert (
        await scalar(db, "SELECT cleanup_status FROM attachments WHERE id = %s", (att.id,))
        == "done"
    )
    assert fake.files == set()
    resolved = await ainvoke(
        _cli(config_file, "dead-letters", "list", "--status", "resolved", "--json"), env
    )
    assert [e["id"] for e in resolved.json()] == [dead_id]


async def test_a_replay_that_fails_again_returns_to_pending(
    db: str, config_file: Path, env: dict[str, str | None]
) -> None:
    await enqueue_raw(db, AQ, b"still poison")
    assert (await ainvoke(_cli(config_file, "drain"), env)).code == 1
    [dead_id] = [r["id"] for r in await rows(db, "SELECT id FROM modkit_outbox_dead_letters")]
    attempts = (await _dead_letter(db, dead_id))["attempts"]

    replayed = await ainvoke(_cli(config_file, "dead-letters", "replay", "--queue", AQ), env)
    assert replayed.stdout.strip() == f"replayed 1 dead letter(s): {dead_id}"
    drained = await ainvoke(_cli(config_file, "drain", "--json"), env)

    assert drained.code == 1, drained
    row = await _dead_letter(db, dead_id)
    assert row["status"] == "pending"
    assert row["attempts"] == attempts + 1
    assert await scalar(db, "SELECT count(*) FROM modkit_outbox_dead_letters") == 1


async def test_discard(db: str, config_file: Path, env: dict[str, str | None]) -> None:
    for n in range(3):
        await enqueue_raw(db, AQ, b"poison %d" % n)
    assert (await ainvoke(_cli(config_file, "drain"), env)).code == 1
    ids = sorted(r["id"] for r in await rows(db, "SELECT id FROM modkit_outbox_dead_letters"))

    result = await ainvoke(_cli(config_file, "dead-letters", "discard", "--id", str(ids[0])), env)

    assert result.code == 0, result
    assert result.stdout.strip() == f"discarded 1 dead letter(s): {ids[0]}"
    row = await _dead_letter(db, ids[0])
    assert row["status"] == "discarded"
    assert row["completed_at"] is not None
    pending = await ainvoke(_cli(config_file, "dead-letters", "list", "--json"), env)
    assert sorted(e["id"] for e in pending.json()) == ids[1:]
    replay = await ainvoke(_cli(config_file, "dead-letters", "replay", "--id", str(ids[0])), env)
    assert_one_line_error(replay, "already discarded", code=2)  # discarded stays discarded
    assert (await _dead_letter(db, ids[0]))["status"] == "discarded"

    rest = await ainvoke(_cli(config_file, "dead-letters", "discard", "--all"), env)
    assert rest.stdout.strip() == f"discarded 2 dead letter(s): {ids[1]}, {ids[2]}"
    discarded = await ainvoke(
        _cli(config_file, "dead-letters", "list", "--status", "discarded", "--json"), env
    )
    assert sorted(e["id"] for e in discarded.json()) == ids


@pytest.mark.parametrize("action", ["replay", "discard"])
async def test_replay_and_discard_need_a_scope(
    db: str, config_file: Path, env: dict[str, str | None], action: str
) -> None:
    await enqueue_raw(db, AQ, b"poison")
    assert (await ainvoke(_cli(config_file, "drain"), env)).code == 1

    result = await ainvoke(_cli(config_file, "dead-letters", action), env)

    assert_one_line_error(result, "--id", "--queue", "--all", code=2)
    assert await scalar(db, "SELECT status FROM modkit_outbox_dead_letters") == "pending"
