"""`status` answers an operator's first questions: who holds each lease and until when, which
tenants have the most cleanup left, and when the next retry is due (never "-0s")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cli.support import AQ, ainvoke, delete_single, rows, seed
from cwlab.fake_openai import FakeOpenAI, Fault


async def test_lease_holder_and_expiry(
    db: str, config_file: Path, env: dict[str, str | None]
) -> None:
    await rows(
        db,
        "UPDATE modkit_outbox_processor pr SET locked_by = 'replica-7', "
        " locked_until = now() + interval '90 seconds'"
        " FROM modkit_outbox_partitions p WHERE p.id = pr.partition_id"
        " AND p.queue = %s AND p.partition = 1 RETURNING pr.partition_id",
        (AQ,),
    )

    report = (await ainvoke(["--config", str(config_file), "status", "--json"], env)).json()
    human = (await ainvoke(["--config", str(config_file), "status"], env)).stdout

    [leased] = [p for p in report["partitions"] if p["leased_by"]]
    assert (leased["queue"], leased["partition"], leased["leased_by"]) == (AQ, 1, "replica-7")
    assert 80 < leased["lease_expires_in_seconds"] <= 90
    [line] = [line for line in human.splitlines() if "replica-7" in line]
    assert line.split()[-2:] in (["replica-7", "90s"], ["replica-7", "89s"]), line
    free = [p for p in report["partitions"] if not p["leased_by"]]
    assert all(p["lease_expires_in_seconds"] is None for p in free)


async def test_top_tenants_by_debt_then_backlog(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    world = await seed(db, fake, chats=2, files_per_chat=2, singles=0, tenants=2)
    broken, healthy = world.deleted_chats
    for att in world.chat_attachments:
        if att.chat_id == broken.id:
            fake.inject(Fault(status=400, path_contains=att.provider_file_id))
    await ainvoke(["--config", str(config_file), "drain"], env)
    waiting = await delete_single(db, fake, 3)  # a third tenant: backlog, not yet processed

    report = (await ainvoke(["--config", str(config_file), "status", "--json"], env)).json()
    human = (await ainvoke(["--config", str(config_file), "status"], env)).stdout

    top = [(t["tenant_id"], t["attachments_pending"], t["attachments_failed"],
            t["vector_stores_left"]) for t in report["top_tenants"]]  # fmt: skip
    assert top == [(str(broken.tenant_id), 0, 2, 0)], top  # singles still NULL: not yet taken
    assert str(healthy.tenant_id) not in {t[0] for t in top}  # fully cleaned: not listed
    section = human.split("Tenants with the most cleanup left", 1)[1].splitlines()
    assert section[1].split() == [
        "tenant_id", "attachments_pending", "attachments_failed", "vector_stores_left",
    ]  # fmt: skip
    assert section[2].split() == [str(broken.tenant_id), "0", "2", "0"]
    assert human.splitlines()[0] == (
        "Left to do: 3 outbox message(s), 0 parked for retry, 0 pending dead letter(s); "
        "attachment rows 0 pending, 2 failed; 0 vector store(s) of deleted chats"
    )
    assert len(waiting) == 3


async def test_a_due_retry_is_never_shown_as_negative(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    [flaky] = await delete_single(db, fake, 1)
    fake.inject(Fault(status=503, path_contains=flaky.provider_file_id))
    await ainvoke(["--config", str(config_file), "drain"], env)  # parks it (backoff < 1 s)
    await asyncio.sleep(1.5)  # now due

    report = (await ainvoke(["--config", str(config_file), "status", "--json"], env)).json()
    human = (await ainvoke(["--config", str(config_file), "status"], env)).stdout

    assert [(r["due"], r["parked"], r["next_due_in_seconds"]) for r in report["retries"]] == [
        (1, 0, None)
    ]
    assert "-0s" not in human
    retries = human.split("Parked retries", 1)[1].splitlines()
    assert retries[2].split()[1:3] == ["1", "0"], retries
    assert retries[2].split()[-1] == "-", retries
