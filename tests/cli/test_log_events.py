"""Logs a support engineer can follow: one event name per outcome of an attachment's cleanup, and
the chat service's ``system_request_id`` on every line about its chat deletion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from factories import create_attachment, create_chat

from cli.support import QUEUES, arun_subprocess, make_config, write_config
from cwlab.fake_openai import FakeOpenAI, Fault
from worker import producer


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


async def test_each_outcome_has_its_own_event_and_chat_lines_carry_the_request_id(
    db: str, fake: FakeOpenAI, tmp_path: Path, env: dict[str, str | None]
) -> None:
    extra = {
        "outbox.retry": {"base_seconds": 0.05, "max_seconds": 0.1, "max_deliveries": 6},
        "cleanup.max_attempts": 5,
    }
    config = write_config(tmp_path / "c.yaml", make_config(fake, extra=extra))
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        chat = await create_chat(conn)
        ok, flaky, refused = [await create_attachment(conn, chat.id, chat.tenant_id) for _ in "abc"]
        for att in (ok, flaky, refused):
            fake.add_file(att.provider_file_id)
        request_id = await producer.delete_chat(
            conn, QUEUES, tenant_id=chat.tenant_id, chat_id=chat.id, user_id=chat.user_id
        )
    fake.inject(Fault(status=503, times=3, path_contains=flaky.provider_file_id))  # one delivery
    fake.inject(Fault(status=400, path_contains=refused.provider_file_id))

    result = await arun_subprocess(
        ["--config", str(config), "--log-format", "json", "drain", "--until-empty"], env
    )

    assert result.code == 1, result  # the refused file is a terminal failure
    events = _events(result.stderr)
    by_attachment: dict[str, list[str]] = {}
    for event in events:
        if event["event"].startswith("attachment_clean"):
            by_attachment.setdefault(event["attachment_id"], []).append(event["event"])
    assert by_attachment[str(ok.id)] == ["attachment_cleaned"]
    assert by_attachment[str(flaky.id)] == ["attachment_cleanup_retrying", "attachment_cleaned"]
    assert by_attachment[str(refused.id)] == ["attachment_cleanup_failed"]
    assert not any("result" in e for e in events if e["event"] == "attachment_cleaned")

    about_chat = [e for e in events if e.get("chat_id") == str(chat.id)]
    assert {e["event"] for e in about_chat} >= {"attachment_cleaned", "message_handled"}
    assert {e.get("system_request_id") for e in about_chat} == {str(request_id)}, about_chat
