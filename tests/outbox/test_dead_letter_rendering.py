"""`dead-letters list` renders every payload the table can hold (SPEC §4.6, §11).

The worker itself dead-letters payloads it could not parse: 100k-deep nesting, megabytes, bytes
that are not UTF-8. Listing them must never re-parse them into Python objects without bounds;
they are shown as (truncated) text, while ordinary JSON payloads are still shown as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli.support import arun_subprocess, base_env, make_config, write_config

from worker import render

from .helpers import AQ, partition_id

DEEP = 100_000
SHOWN = render.MAX_PAYLOAD_CHARS_SHOWN


async def _store_dead_letter(conn, data: bytes) -> int:
    cur = await conn.execute(
        "INSERT INTO modkit_outbox_dead_letters"
        " (partition_id, seq, payload, payload_type, created_at, last_error, attempts)"
        " VALUES (%s, nextval('rendering_seq'), %s, 'application/json', now(), 'bad', 1)"
        " RETURNING id",
        (await partition_id(conn, AQ, 0), data),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


PAYLOADS = {
    "deep_array": b"[" * DEEP + b"]" * DEEP,
    "deep_object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "deep_unclosed": b"[" * DEEP,
    "nested_past_the_shown_depth": b"[" * 200 + b"]" * 200,
    "megabytes": b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}',
    "not_utf8": b'{"a": "\xff\xfe"}',
    "ordinary": b'{"event_type": "attachment_deleted", "n": [1, {"k": null}]}',
}


@pytest.fixture
async def stored(conn) -> dict[str, int]:
    await conn.execute("CREATE SEQUENCE rendering_seq")
    return {name: await _store_dead_letter(conn, data) for name, data in PAYLOADS.items()}


async def test_list_json_renders_every_stored_payload(db, conn, stored, tmp_path: Path):
    config = write_config(tmp_path / "config.yaml", make_config(None))
    args = ["--config", str(config), "dead-letters", "list", "--json"]
    result = await arun_subprocess(args, base_env(db), within=60)

    assert result.code == 0, result
    shown = {entry["id"]: entry["payload"] for entry in json.loads(result.stdout)}
    by_name = {name: shown[dead_letter_id] for name, dead_letter_id in stored.items()}
    for name in ("deep_array", "deep_object", "deep_unclosed", "nested_past_the_shown_depth"):
        text = by_name[name]
        assert isinstance(text, str), name
        assert text.startswith(PAYLOADS[name][: SHOWN // 2].decode()), name
    assert by_name["deep_array"].endswith(f"... [{2 * DEEP} bytes, truncated]")
    assert len(by_name["deep_array"]) < SHOWN + 40
    assert (
        by_name["nested_past_the_shown_depth"] == PAYLOADS["nested_past_the_shown_depth"].decode()
    )
    assert by_name["megabytes"].startswith('{"pad": "xxx')
    assert by_name["megabytes"].endswith(f"... [{len(PAYLOADS['megabytes'])} bytes, truncated]")
    assert by_name["not_utf8"] == {"a": "\ufffd\ufffd"}
    assert by_name["ordinary"] == json.loads(PAYLOADS["ordinary"])  # still shown as JSON


async def test_human_list_renders_every_stored_payload(db, conn, stored, tmp_path: Path):
    config = write_config(tmp_path / "config.yaml", make_config(None))
    args = ["--config", str(config), "dead-letters", "list"]
    result = await arun_subprocess(args, base_env(db), within=60)

    assert result.code == 0, result
    listed = result.stdout.splitlines()[1:]
    assert sorted(int(line.split()[0]) for line in listed) == sorted(stored.values())
