"""The documented repair path after a revoked key is fixed: `retry-failed --all`, then a drain,
finishes every cleanup the fix unblocks — failed rows, rows left pending behind dead letters,
vector stores — and leaves no pending dead letter whose cleanup is finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.support import (
    AQ,
    KEY_ENV,
    ainvoke,
    enqueue_raw,
    make_config,
    rows,
    seed,
    truth,
    write_config,
)
from cwlab.fake_openai import FakeOpenAI


def _cli(config_file: Path, *args: str) -> list[str]:
    return ["--config", str(config_file), *args]


def _revoked_key_config(tmp_path: Path, fake: FakeOpenAI, *, breaker: bool) -> Path:
    """With the breaker, most files are refused locally (rows stay pending, messages dead-letter);
    without it, every file is tried until its row is failed."""
    extra = {"outbox.retry": {"base_seconds": 0.1, "max_seconds": 0.3, "max_deliveries": 4}}
    if breaker:
        extra["providers.circuit_breaker"] = {"failure_threshold": 2, "cooldown_seconds": 0.2}
    return write_config(tmp_path / "config.yaml", make_config(fake, extra=extra))


async def _dead_letters(db: str) -> dict[str, int]:
    found = await rows(
        db, "SELECT status, count(*) AS n FROM modkit_outbox_dead_letters GROUP BY status"
    )
    return {r["status"]: r["n"] for r in found}


@pytest.mark.parametrize("breaker", [True, False], ids=["breaker-open", "attempts-exhausted"])
async def test_retry_failed_all_finishes_everything_the_key_fix_unblocks(
    db: str, fake: FakeOpenAI, tmp_path: Path, env: dict[str, str | None], breaker: bool
) -> None:
    config_file = _revoked_key_config(tmp_path, fake, breaker=breaker)
    world = await seed(db, fake, chats=3, files_per_chat=2, singles=3)
    await enqueue_raw(db, AQ, b"{not json")  # poison: no fix unblocks it
    revoked = env | {KEY_ENV: "sk-revoked"}

    broken = await ainvoke(
        _cli(config_file, "drain", "--until-empty", "--max-seconds", "30"), revoked
    )

    assert broken.code == 1, broken
    before = await truth(db)
    assert before["attachments"].get("done", 0) == 0, before
    assert before["vector_store_rows"] == 3, before
    assert (await _dead_letters(db)).get("pending", 0) >= 2, before

    repaired = await ainvoke(_cli(config_file, "retry-failed", "--all"), env)
    assert repaired.code == 0, repaired
    drained = await ainvoke(_cli(config_file, "drain", "--until-empty", "--max-seconds", "60"), env)

    after = await truth(db)
    assert after["attachments"] == {"done": len(world.chat_attachments) + 3}, (after, drained)
    assert after["vector_store_rows"] == 0, after
    assert after["retries"] == {}, after
    assert after["unprocessed"] == 0, after
    assert fake.files == set()
    assert fake.vector_stores == set()
    # Every dead letter the fix unblocked is resolved; only the poison one is left pending.
    pending = await rows(
        db, "SELECT payload FROM modkit_outbox_dead_letters WHERE status = 'pending'"
    )
    assert [bytes(r["payload"]) for r in pending] == [b"{not json"], (pending, drained)
    assert drained.code == 0, drained  # the poison message did not come back
