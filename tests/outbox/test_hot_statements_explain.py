"""The outbox's hot statements stay index lookups on large outbox tables (issue 13).

Every round of every lane runs these: leasing partitions, sequencing incoming rows, reading a
batch, leasing due retries, recording outcomes (the dead-letter insert looks its message up),
claiming dead letters for a replay. Each is planned (``EXPLAIN``, nothing runs) on tables of
100k rows, analysed, as a backlog leaves them, and must reach those tables through an index,
never a sequential scan. ``test_a_dropped_index_is_seen`` drops each index once and sees the
check fail, so a check that could never fail would not pass unnoticed.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.explain import nodes, plan_of

ROWS = 50_000
PARTITIONS = 64
QUEUE = "explain.queue"
BIG_TABLES = {
    "modkit_outbox_body",
    "modkit_outbox_incoming",
    "modkit_outbox_outgoing",
    "modkit_outbox_dead_letters",
    "cleanup_worker_retries",
    "cleanup_worker_replays",
}


@pytest.fixture
async def backlog(conn: psycopg.AsyncConnection) -> psycopg.AsyncConnection:
    """A queue of 64 partitions with 100k bodies, outgoing rows (about ten unprocessed per
    partition), incoming rows, parked retries (1% due), dead letters (1% pending) and 10k
    replay links."""
    statements = [
        "INSERT INTO modkit_outbox_partitions (queue, partition)"
        " SELECT %(queue)s, g FROM generate_series(0, %(partitions)s - 1) g",
        "INSERT INTO modkit_outbox_body (payload, payload_type)"
        " SELECT '\\x7b7d'::bytea, 'application/json' FROM generate_series(1, %(rows)s)",
        "INSERT INTO modkit_outbox_outgoing (partition_id, body_id, seq)"
        " SELECT p.id, g, g / %(partitions)s + 1 FROM generate_series(1, %(rows)s) g"
        " JOIN modkit_outbox_partitions p"
        "   ON p.queue = %(queue)s AND p.partition = g %% %(partitions)s",
        "INSERT INTO modkit_outbox_processor (partition_id, processed_seq)"
        " SELECT id, %(rows)s / %(partitions)s - 10 FROM modkit_outbox_partitions"
        " WHERE queue = %(queue)s",
        "INSERT INTO modkit_outbox_incoming (partition_id, body_id)"
        " SELECT p.id, g FROM generate_series(1, %(rows)s) g"
        " JOIN modkit_outbox_partitions p"
        "   ON p.queue = %(queue)s AND p.partition = g %% %(partitions)s",
        "INSERT INTO cleanup_worker_retries (partition_id, seq, payload, payload_type,"
        "   created_at, deliveries, reason, not_before)"
        " SELECT p.id, g, '\\x7b7d'::bytea, 'application/json', now(), 1, 'transient',"
        "   CASE WHEN g %% 100 = 0 THEN now() - interval '1 minute'"
        "        ELSE now() + g * interval '1 second' END"
        " FROM generate_series(1, %(rows)s) g"
        " JOIN modkit_outbox_partitions p"
        "   ON p.queue = %(queue)s AND p.partition = g %% %(partitions)s",
        "INSERT INTO modkit_outbox_dead_letters (partition_id, seq, payload, payload_type,"
        "   created_at, attempts, status, completed_at)"
        " SELECT p.id, g, '\\x7b7d'::bytea, 'application/json', now(), 1,"
        "   CASE WHEN g %% 100 = 0 THEN 'pending' ELSE 'resolved' END,"
        "   CASE WHEN g %% 100 = 0 THEN NULL ELSE now() END"
        " FROM generate_series(1, %(rows)s) g"
        " JOIN modkit_outbox_partitions p"
        "   ON p.queue = %(queue)s AND p.partition = g %% %(partitions)s",
        "INSERT INTO cleanup_worker_replays (body_id, dead_letter_id)"
        " SELECT g * 10, g FROM generate_series(1, %(rows)s / 10) g",
    ]
    params = {"queue": QUEUE, "partitions": PARTITIONS, "rows": ROWS}
    for statement in statements:
        await conn.execute(statement.encode(), params)
    for table in sorted(BIG_TABLES):
        await conn.execute(f"ANALYZE {table}".encode())
    return conn


async def _a_partition(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute(
        "SELECT id FROM modkit_outbox_partitions WHERE queue = %s AND partition = 7", [QUEUE]
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def _outcome(partition_id: int, kind: str) -> dict[str, Any]:
    """``record_outcomes``' arrays for one message of ``kind`` (reject: a new dead letter)."""
    return {
        "partition_ids": [partition_id], "seqs": [ROWS // PARTITIONS - 5],
        "payloads": [b"{}"], "payload_types": ["application/json"], "created_ats": [None],
        "kinds": [kind], "reasons": ["invalid"], "errors": ["bad"], "delays": [0.0],
        "deliveries": [1], "dead_letter_ids": [None],
    }  # fmt: skip


# (statement, its parameters given one partition id, the indexes it must reach the big tables by)
HOT: list[tuple[str, Any, set[str]]] = [
    (
        "lease_partitions",
        lambda p: {"queue": QUEUE, "worker_id": "w", "lease_seconds": 30, "limit": 4},
        {"idx_modkit_outbox_outgoing_partition_seq"},
    ),
    (
        "sequence_partition",
        lambda p: {"partition_id": p, "limit": 500},
        {"idx_modkit_outbox_incoming_partition"},
    ),
    (
        "read_batch",
        lambda p: {"partition_id": p, "after_seq": ROWS // PARTITIONS - 10, "limit": 100},
        {
            "idx_modkit_outbox_outgoing_partition_seq",
            "modkit_outbox_body_pkey",
            "cleanup_worker_replays_pkey",
        },
    ),
    (
        "lease_due_retries",
        lambda p: {"queues": [QUEUE], "worker_id": "w", "lease_seconds": 30, "limit": 100},
        {"idx_cleanup_worker_retries_not_before"},
    ),
    (
        "next_retry_due",
        lambda p: {"queues": [QUEUE]},
        {"idx_cleanup_worker_retries_not_before"},
    ),
    (
        "record_outcomes",
        lambda p: _outcome(p, "reject"),
        {"idx_modkit_outbox_dead_letters_partition_seq"},
    ),
    (
        "record_outcomes",
        lambda p: _outcome(p, "ok"),
        {"cleanup_worker_retries_partition_id_seq_key"},
    ),
    (
        "claim_dead_letters_for_replay",
        lambda p: {"queue": QUEUE, "ids": None, "limit": 100, "timeout_seconds": 60},
        {"idx_modkit_outbox_dead_letters_claimable"},
    ),
]


async def _problems(conn: psycopg.AsyncConnection) -> list[str]:
    """What keeps a hot statement off its index, planned with sequential scans disabled: a
    sequential scan left in the plan (or the wanted index missing from it) means no index can
    serve the statement's access to that table."""
    partition_id = await _a_partition(conn)
    problems = []
    for statement, params, wanted in HOT:
        async with conn.transaction(force_rollback=True):
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = await plan_of(conn, statement, params(partition_id))
        scans = sorted(
            n["Relation Name"]
            for n in nodes(plan)
            if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in BIG_TABLES
        )
        used = {n["Index Name"] for n in nodes(plan) if "Index Name" in n}
        if scans or not wanted <= used:
            problems.append(f"{statement}: scans {scans}, uses {sorted(used)}, wants {wanted}")
    return problems


async def test_hot_statements_reach_large_outbox_tables_by_index(
    backlog: psycopg.AsyncConnection,
) -> None:
    problems = await _problems(backlog)
    assert problems == [], "\n".join(problems)


async def test_a_dropped_index_is_seen(backlog: psycopg.AsyncConnection) -> None:
    """Each index the statements rely on, dropped (in a transaction rolled back after), makes
    the check fail: the check reads the plans, it does not pass by construction."""
    indexes = sorted(set().union(*(wanted for _, _, wanted in HOT)) - _constraints())
    for index in indexes:
        async with backlog.transaction(force_rollback=True):
            await backlog.execute(f"DROP INDEX {index}".encode())
            assert any(index in problem for problem in await _problems(backlog)), index


def _constraints() -> set[str]:
    """Indexes behind a primary key or unique constraint: dropped with their constraint only
    (and the statements' correctness, not only their speed, depends on those)."""
    return {
        "modkit_outbox_body_pkey",
        "cleanup_worker_replays_pkey",
        "cleanup_worker_retries_partition_id_seq_key",
    }
