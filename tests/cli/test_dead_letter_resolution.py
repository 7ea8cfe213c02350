"""Dead letters whose cleanup was finished by other means (the chat service re-sent the event, an
earlier repair enqueued a fresh message) are resolved, so the critical ChatDeadLetters alert stops
firing; dead letters whose cleanup is unfinished stay pending."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg

from cli.support import (
    KEY_ENV,
    QUEUES,
    DaemonProcess,
    ainvoke,
    make_config,
    rows,
    seed,
    wait_for,
    write_config,
)
from cwlab.fake_openai import FakeOpenAI
from worker import producer


def _cli(config_file: Path, *args: str) -> list[str]:
    return ["--config", str(config_file), *args]


async def _chat_dead_letters(db: str) -> list[str]:
    found = await rows(
        db,
        "SELECT d.status FROM modkit_outbox_dead_letters d"
        " JOIN modkit_outbox_partitions p ON p.id = d.partition_id"
        " WHERE p.queue = %s ORDER BY d.id",
        (QUEUES.chat_queue,),
    )
    return [r["status"] for r in found]


async def test_drain_resolves_a_chat_dead_letter_once_the_chat_is_fully_cleaned(
    db: str, fake: FakeOpenAI, tmp_path: Path, env: dict[str, str | None]
) -> None:
    retry = {"base_seconds": 0.05, "max_seconds": 0.1, "max_deliveries": 4}
    config = write_config(tmp_path / "c.yaml", make_config(fake, extra={"outbox.retry": retry}))
    world = await seed(db, fake, chats=2, files_per_chat=0, singles=0)  # vector stores only
    revoked = await ainvoke(
        _cli(config, "drain", "--until-empty", "--max-seconds", "30"), env | {KEY_ENV: "sk-no"}
    )
    assert revoked.code == 1, revoked
    assert await _chat_dead_letters(db) == ["pending", "pending"]

    # The key is fixed and the chat service re-sends the first chat's event (other means).
    cleaned = world.deleted_chats[0]
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await producer.enqueue_chat_cleanup(
            conn, QUEUES, tenant_id=cleaned.tenant_id, chat_id=cleaned.id
        )
    drained = await ainvoke(_cli(config, "drain", "--until-empty", "--json"), env)

    assert drained.code == 0, drained
    assert drained.json()["dead_letters_resolved"] == 1
    # The first chat is fully cleaned: its dead letter is resolved; the second is not cleaned.
    assert sorted(await _chat_dead_letters(db)) == ["pending", "resolved"]
    assert len(fake.vector_stores) == 1

    # The documented repair finishes the second one too: nothing pending is left.
    repaired = await ainvoke(_cli(config, "retry-failed", "--all"), env)
    assert "dead letters: replayed 1 whose cleanup is unfinished" in repaired.stdout, repaired
    assert (await ainvoke(_cli(config, "drain", "--until-empty"), env)).code == 0
    assert await _chat_dead_letters(db) == ["resolved", "resolved"]
    assert fake.vector_stores == set()


async def test_the_daemon_resolves_a_finished_chats_dead_letter_by_itself(
    db: str, fake: FakeOpenAI, tmp_path: Path, env: dict[str, str | None]
) -> None:
    """No command needed: the running worker's vacuum loop resolves it (ChatDeadLetters clears)."""
    retry = {"base_seconds": 0.05, "max_seconds": 0.1, "max_deliveries": 4}
    config = write_config(tmp_path / "c.yaml", make_config(fake, extra={"outbox.retry": retry}))
    world = await seed(db, fake, chats=1, files_per_chat=0, singles=0)  # one vector store
    revoked = await ainvoke(
        _cli(config, "drain", "--until-empty", "--max-seconds", "30"), env | {KEY_ENV: "sk-no"}
    )
    assert revoked.code == 1, revoked
    assert await _chat_dead_letters(db) == ["pending"]
    # Cleaned by other means: the chat service re-sent the event and another worker finished it.
    cleaned = world.deleted_chats[0]
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await conn.execute("DELETE FROM chat_vector_stores WHERE chat_id = %s", (cleaned.id,))

    daemon = DaemonProcess(_cli(config), env, tmp_path / "daemon.log")
    try:
        await wait_for(
            lambda: _all_resolved(db), within=30, what="the dead letter resolved by the daemon"
        )
    finally:
        daemon.send(signal.SIGTERM)
        await daemon.wait(within=30)
        events = daemon.events()
        daemon.kill()
    assert any(e.get("event") == "dead_letters_resolved" for e in events), events[-5:]


async def _all_resolved(db: str) -> bool:
    return await _chat_dead_letters(db) == ["resolved"]
