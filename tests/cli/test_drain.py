"""`drain`: one pass; its summary is database truth; exit codes 0 / 1 / 2 / 3 (SPEC §7)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from cli.support import (
    AQ,
    CQ,
    UNREACHABLE_DSN,
    ainvoke,
    arun_subprocess,
    assert_one_line_error,
    base_env,
    enqueue_raw,
    seed,
    truth,
)
from cwlab.fake_openai import FakeOpenAI, Fault


def _args(config_file: Path, *more: str) -> list[str]:
    return ["--config", str(config_file), "drain", *more]


async def test_clean_drain_matches_database_and_provider(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    world = await seed(db, fake, chats=2, files_per_chat=2, singles=3, missing_at_provider=1)
    missing = world.single_attachments[0].provider_file_id

    result = await ainvoke(_args(config_file, "--json"), env)

    assert result.code == 0, result
    summary = result.json()
    assert summary["queues"] == {
        AQ: {"done": 3, "retried": 0, "dead_lettered": 0},
        CQ: {"done": 2, "retried": 0, "dead_lettered": 0},
    }
    assert summary["attachments_failed"] == 0
    assert (summary["remaining_messages"], summary["remaining_retries"]) == (0, 0)
    assert summary["clean"] is True
    assert summary["timed_out"] is False
    db_truth = await truth(db)
    assert db_truth == {
        "attachments": {"done": len(world.files)},
        "dead_letters": {},
        "retries": {},
        "unprocessed": 0,
        "vector_store_rows": 0,
    }
    # The provider saw exactly one successful delete per resource, and a 404 for the file
    # that was already gone (which is success, not a failure).
    existing = set(world.files) - {missing}
    assert sorted(r.resource_id for r in fake.deletes("file")) == sorted(existing)
    assert sorted(r.resource_id for r in fake.deletes("vector_store")) == sorted(
        world.vector_stores
    )
    assert [r.status for r in fake.requests() if r.resource_id == missing] == [404]
    assert fake.files == set()
    assert fake.vector_stores == set()

    again = await ainvoke(_args(config_file, "--json"), env)
    assert again.code == 0, again
    assert again.json()["queues"][AQ]["done"] == 0  # nothing left: nothing handled twice


async def test_poison_message_is_dead_lettered_and_exits_1(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    await seed(db, fake, chats=0, singles=2)
    await enqueue_raw(db, AQ, b"this is not json")

    result = await ainvoke(_args(config_file, "--json"), env)

    assert result.code == 1, result
    summary = result.json()
    assert summary["queues"][AQ] == {"done": 2, "retried": 0, "dead_lettered": 1}
    assert summary["attachments_failed"] == 0
    assert summary["clean"] is False
    db_truth = await truth(db)
    assert db_truth["dead_letters"] == {(AQ, "pending"): 1}
    assert db_truth["attachments"] == {"done": 2}
    assert db_truth["unprocessed"] == 0  # the rest of the partition went on

    # A second pass produces no new dead letters: clean again.
    again = await ainvoke(_args(config_file), env)
    assert again.code == 0, again


async def test_provider_400_is_a_terminal_failure_and_exits_1(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    world = await seed(db, fake, chats=0, singles=3)
    refused = world.single_attachments[1].provider_file_id
    fake.inject(Fault(status=400, path_contains=refused))

    result = await ainvoke(_args(config_file, "--json"), env)

    assert result.code == 1, result
    summary = result.json()
    assert summary["attachments_failed"] == 1
    assert summary["queues"][AQ] == {"done": 2, "retried": 0, "dead_lettered": 1}
    db_truth = await truth(db)
    assert db_truth["attachments"] == {"done": 2, "failed": 1}
    assert db_truth["dead_letters"] == {(AQ, "pending"): 1}
    assert [r.status for r in fake.requests() if r.resource_id == refused] == [400]
    assert fake.files == {refused}


async def test_retries_are_parked_then_finished_with_until_empty(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    world = await seed(db, fake, chats=0, singles=3)
    flaky = world.single_attachments[0].provider_file_id
    fake.inject(Fault(status=503, path_contains=flaky))

    first = await ainvoke(_args(config_file, "--json"), env)

    assert first.code == 0, first  # a parked retry is not a failure
    summary = first.json()
    assert summary["queues"][AQ]["done"] == 2
    assert summary["queues"][AQ]["retried"] >= 1
    db_truth = await truth(db)
    assert summary["remaining_retries"] == sum(db_truth["retries"].values()) == 1
    assert summary["remaining_messages"] == db_truth["unprocessed"] == 0
    assert db_truth["attachments"] == {"done": 2, "pending": 1}

    fake.clear_faults()
    second = await ainvoke(
        _args(config_file, "--until-empty", "--max-seconds", "30", "--json"), env
    )

    assert second.code == 0, second
    summary = second.json()
    assert summary["queues"][AQ] == {"done": 1, "retried": 0, "dead_lettered": 0}
    assert (summary["remaining_messages"], summary["remaining_retries"]) == (0, 0)
    db_truth = await truth(db)
    assert db_truth["retries"] == {}
    assert db_truth["attachments"] == {"done": 3}
    assert fake.files == set()


async def test_until_empty_stops_at_max_seconds(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    """A retry parked longer than --max-seconds (its backoff raised through env overrides)."""
    world = await seed(db, fake, chats=0, singles=1)
    fake.inject(Fault(status=503, path_contains=world.files[0]))
    env = {
        **env,
        "CLEANUP_WORKER__OUTBOX__RETRY__BASE_SECONDS": "20",
        "CLEANUP_WORKER__OUTBOX__RETRY__MAX_SECONDS": "30",
    }
    started = time.monotonic()

    result = await ainvoke(_args(config_file, "--until-empty", "--max-seconds", "2", "--json"), env)

    assert result.code == 0, result
    assert time.monotonic() - started < 2 + 2.5  # stops at --max-seconds, not much later
    summary = result.json()
    assert summary["timed_out"] is True
    assert summary["remaining_retries"] == 1 == sum((await truth(db))["retries"].values())


async def test_queue_filter_leaves_the_other_queue(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    await seed(db, fake, chats=2, singles=2)

    result = await ainvoke(_args(config_file, "--queue", AQ, "--json"), env)

    assert result.code == 0, result
    summary = result.json()
    assert list(summary["queues"]) == [AQ]
    assert summary["queues"][AQ]["done"] == 2
    # The chat messages are untouched; their attachments still pending.
    assert summary["remaining_messages"] == 0  # counted for the drained queue only
    db_truth = await truth(db)
    assert db_truth["unprocessed"] == 2
    assert db_truth["attachments"] == {"done": 2, "pending": 4}

    rest = await ainvoke(_args(config_file, "--queue", CQ, "--json"), env)
    assert rest.code == 0, rest
    assert rest.json()["queues"] == {CQ: {"done": 2, "retried": 0, "dead_lettered": 0}}
    assert (await truth(db))["unprocessed"] == 0


async def test_unreachable_database_exits_3_fast(config_file: Path) -> None:
    started = time.monotonic()
    result = await ainvoke(_args(config_file, "--json"), base_env(UNREACHABLE_DSN))
    assert time.monotonic() - started < 10
    assert_one_line_error(result, "database unavailable", code=3)
    assert result.stdout == ""


async def test_missing_schema_is_a_clear_error(config_file: Path, empty_db: str) -> None:
    result = await ainvoke(_args(config_file), base_env(empty_db))
    assert_one_line_error(result, "cleanup-worker migrate", code=2)


@pytest.mark.slow
async def test_drain_as_a_process(
    db: str, fake: FakeOpenAI, config_file: Path, env: dict[str, str | None]
) -> None:
    """The real entry point: human summary on stdout, JSON logs and plain progress lines (not a
    TTY) on stderr, exit 1 on a reject."""
    world = await seed(db, fake, chats=1, files_per_chat=2, singles=2)
    await enqueue_raw(db, CQ, json.dumps({"reason": "chat_soft_delete"}).encode())

    result = await arun_subprocess(_args(config_file), env)

    assert result.code == 1, result
    out = result.stdout
    assert out.splitlines()[0].split() == ["queue", "done", "retried", "dead_lettered"]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:3]}
    assert rows == {AQ: ["2", "0", "0"], CQ: ["1", "0", "1"]}
    assert "attachments that reached terminal failure in this pass: 0" in out
    assert "left: 0 outbox messages unprocessed, 0 parked for retry" in out
    assert "inspect: cleanup-worker status; cleanup-worker dead-letters list" in out
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    progress = [line for line in lines if line.startswith(("draining: ", "drained: "))]
    assert progress[0].startswith("draining: 0/4 messages (0%)"), progress  # counted up front
    assert progress[-1].startswith("drained: 4/4 messages (100%)"), progress
    events = [json.loads(line) for line in lines if line not in progress]
    handled = [e for e in events if e.get("event") == "message_handled"]
    assert len(handled) == 4
    assert {e["outcome"] for e in handled} == {"ok", "reject"}
    assert all({"queue", "partition", "seq"} <= e.keys() for e in handled)
    assert (await truth(db))["attachments"] == {"done": len(world.files)}


@pytest.mark.slow
async def test_exit_codes_as_a_process(config_file: Path, db: str) -> None:
    """0 clean, 2 usage / configuration, 3 database unreachable: from the real entry point."""
    cases = {
        0: (["--config", str(config_file), "drain"], base_env(db)),
        2: (["--config", str(config_file), "drain", "--queue", "nope"], base_env(db)),
        3: (["--config", str(config_file), "drain"], base_env(UNREACHABLE_DSN)),
    }
    bad_flag = (["--config", str(config_file), "drain", "--bogus"], base_env(db))
    missing = (["--config", str(config_file) + ".missing", "drain"], base_env(db))
    runs = [*cases.values(), bad_flag, missing]
    results = await asyncio.gather(*(arun_subprocess(args, env) for args, env in runs))
    for code, result in zip([*cases, 2, 2], results, strict=True):
        assert result.code == code, result
        assert "Traceback" not in result.stderr, result
    assert results[0].stdout.splitlines()[0].split() == [
        "queue",
        "done",
        "retried",
        "dead_lettered",
    ]
