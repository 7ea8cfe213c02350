"""`status`: backlog, leases, retries, dead letters and debt, as JSON and for humans."""

from __future__ import annotations

from pathlib import Path

from cli.support import (
    AQ,
    CQ,
    ainvoke,
    delete_single,
    enqueue_raw,
    rows,
    seed,
    truth,
)
from cwlab.fake_openai import FakeOpenAI, Fault

PARTITION_KEYS = {
    "queue", "partition", "messages", "oldest_age_seconds", "processed_seq", "attempts",
    "last_error", "leased_by", "lease_expires_in_seconds",
}  # fmt: skip
RETRY_KEYS = {"queue", "due", "parked", "oldest_age_seconds", "next_due_in_seconds"}
DEAD_KEYS = {"queue", "status", "count", "oldest_age_seconds"}


async def test_status_of_a_fresh_database(config_file: Path, env: dict[str, str | None]) -> None:
    result = await ainvoke(["--config", str(config_file), "status", "--json"], env)
    assert result.code == 0, result
    report = result.json()
    assert set(report) == {
        "partitions", "retries", "dead_letters", "attachments", "outstanding_vector_stores",
        "suspected_routes",
        "top_tenants",
        "index_problems",
        "attachments_estimated",
    }  # fmt: skip
    assert report["suspected_routes"] == []
    assert [(p["queue"], p["partition"]) for p in report["partitions"]] == [
        (queue, n) for queue in (AQ, CQ) for n in range(4)
    ]
    for partition in report["partitions"]:
        assert set(partition) == PARTITION_KEYS
        assert partition["messages"] == 0
        assert partition["leased_by"] is None
        assert partition["oldest_age_seconds"] is None
    assert report["retries"] == []
    assert report["dead_letters"] == []
    assert report["attachments"] == {}
    assert report["index_problems"] == []  # the template database has every index
    assert report["outstanding_vector_stores"] == 0

    human = await ainvoke(["--config", str(config_file), "status"], env)
    assert human.code == 0, human
    text = human.stdout
    for heading in ("Outbox backlog", "Parked retries", "Dead letters"):
        assert heading in text
    assert "Attachments by cleanup_status: none" in text
    assert "Vector stores of deleted chats still to delete: 0" in text


async def test_status_reports_every_kind_of_debt(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    world = await seed(db, fake, chats=1, files_per_chat=1, singles=3)
    refused, flaky = world.single_attachments[0], world.single_attachments[1]
    fake.inject(Fault(status=400, path_contains=refused.provider_file_id))
    fake.inject(Fault(status=503, path_contains=flaky.provider_file_id))
    fake.inject(Fault(status=503, path_contains="/vector_stores/"))
    await enqueue_raw(db, AQ, b"\xff not json")
    env = {  # parked retries stay parked
        **env,
        "CLEANUP_WORKER__OUTBOX__RETRY__BASE_SECONDS": "60",
        "CLEANUP_WORKER__OUTBOX__RETRY__MAX_SECONDS": "60",
    }
    drained = await ainvoke(["--config", str(config_file), "drain"], env)
    assert drained.code == 1, drained
    await delete_single(db, fake, 2)  # new, not yet processed

    result = await ainvoke(["--config", str(config_file), "status", "--json"], env)

    assert result.code == 0, result
    report = result.json()
    db_truth = await truth(db)
    pending = {(p["queue"], p["partition"]): p["messages"] for p in report["partitions"]}
    assert sum(pending.values()) == db_truth["unprocessed"] == 2
    assert all(p["leased_by"] is None for p in report["partitions"])
    seqs = await rows(
        db,
        "SELECT p.queue, p.partition, pr.processed_seq FROM modkit_outbox_processor pr"
        " JOIN modkit_outbox_partitions p ON p.id = pr.partition_id",
    )
    assert {(p["queue"], p["partition"]): p["processed_seq"] for p in report["partitions"]} == {
        (r["queue"], r["partition"]): r["processed_seq"] for r in seqs
    }
    assert max(p["oldest_age_seconds"] or 0 for p in report["partitions"]) > 0

    retries = {r["queue"]: r for r in report["retries"]}
    assert set(retries) == {AQ, CQ}
    for queue, row in retries.items():
        assert set(row) == RETRY_KEYS
        assert row["due"] + row["parked"] == db_truth["retries"][queue] == 1

    assert [(d["queue"], d["status"], d["count"]) for d in report["dead_letters"]] == [
        (AQ, "pending", 2)
    ]
    assert set(report["dead_letters"][0]) == DEAD_KEYS
    assert report["attachments"] == {"done": 2, "failed": 1, "pending": 1, "none": 2}
    assert report["outstanding_vector_stores"] == db_truth["vector_store_rows"] == 1

    human = await ainvoke(["--config", str(config_file), "status"], env)
    assert human.code == 0, human
    text = human.stdout
    assert "Attachments by cleanup_status: done=2, failed=1, none=2, pending=1" in text
    assert "Vector stores of deleted chats still to delete: 1" in text
    dead_section = text.split("Dead letters", 1)[1].splitlines()
    assert dead_section[1].split() == ["queue", "status", "count", "oldest"]
    assert dead_section[2].split()[:3] == [AQ, "pending", "2"]
    backlog = text.split("Outbox backlog", 1)[1].split("Parked retries")[0].splitlines()
    assert backlog[1].split() == [
        "queue", "partition", "messages", "oldest", "processed_seq", "lease_attempts",
        "leased_by", "lease_expires_in",
    ]  # fmt: skip
    assert len([line for line in backlog[2:] if line.strip()]) == 8
