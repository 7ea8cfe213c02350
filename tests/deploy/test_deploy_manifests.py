"""The deploy/ files agree with the code: the shipped config loads, the Deployment's timings fit
it, and the KEDA backlog query runs on the real schema and counts what is due.

The rest of deploy/ (rendering, schemas, alerts, dashboard, Dockerfile) is checked by
scripts/check-deploy.sh, which needs tools this suite does not install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml

from worker.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy/base/config/cleanup-worker.yaml"
QUEUES = ("mini-chat.attachment_cleanup", "mini-chat.chat_cleanup")


def _yaml(rel: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / rel).read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _keda_query() -> str:
    so = _yaml("deploy/overlays/keda/scaledobject.yaml")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    query = trigger["metadata"]["query"]
    assert isinstance(query, str)
    return query


def test_kubernetes_config_is_valid_and_matches_the_deployment() -> None:
    cfg = load_config(CONFIG, environ={"CLEANUP_WORKER_DSN": "postgresql://u@db.example/cw"})
    assert (cfg.outbox.attachment_queue.name, cfg.outbox.chat_queue.name) == QUEUES
    pod = _yaml("deploy/base/deployment.yaml")["spec"]["template"]["spec"]
    # SIGTERM -> in-flight work finishes or is released within the grace; a lease is never
    # held past the kill.
    assert pod["terminationGracePeriodSeconds"] > (
        cfg.outbox.lease_seconds + cfg.outbox.shutdown_grace_seconds
    )
    (worker,) = pod["containers"]
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {
        "metrics": cfg.observability.http_port
    }
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    for backend in cfg.providers.backends.values():
        assert backend.api_key_file is not None
        assert str(Path(backend.api_key_file).parent) in mounts


def test_keda_backlog_query_counts_due_work_of_the_cleanup_queues(db: str) -> None:
    query = _keda_query()
    with psycopg.connect(db, autocommit=True) as conn:
        assert conn.execute(query.encode()).fetchone() == (0,)

        parts: dict[str, int] = dict(
            conn.execute(
                "SELECT queue || '/' || partition, id FROM modkit_outbox_partitions"
            ).fetchall()
        )
        att0, chat1 = parts["mini-chat.attachment_cleanup/0"], parts["mini-chat.chat_cleanup/1"]
        row = conn.execute(
            "INSERT INTO modkit_outbox_partitions (queue, partition) "
            "VALUES ('other.queue', 0) RETURNING id"
        ).fetchone()
        assert row is not None
        other = row[0]
        conn.execute("INSERT INTO modkit_outbox_processor (partition_id) VALUES (%s)", (other,))
        bodies = [
            r[0]
            for r in conn.execute(
                "INSERT INTO modkit_outbox_body (payload, payload_type) "
                "SELECT '\\x7b7d'::bytea, 'application/json' FROM generate_series(1, 12) "
                "RETURNING id"
            ).fetchall()
        ]
        # 3 not yet sequenced on our queues, 1 on another queue (not counted)
        for pid, body in (
            (att0, bodies[0]),
            (chat1, bodies[1]),
            (chat1, bodies[2]),
            (other, bodies[3]),
        ):
            conn.execute(
                "INSERT INTO modkit_outbox_incoming (partition_id, body_id) VALUES (%s, %s)",
                (pid, body),
            )
        # seq 1..5 on att0 with the cursor at 2: 3 due; 2 on the other queue (not counted)
        for seq in range(1, 6):
            conn.execute(
                "INSERT INTO modkit_outbox_outgoing (partition_id, body_id, seq) "
                "VALUES (%s, %s, %s)",
                (att0, bodies[3 + seq], seq),
            )
        for seq in (1, 2):
            conn.execute(
                "INSERT INTO modkit_outbox_outgoing (partition_id, body_id, seq) "
                "VALUES (%s, %s, %s)",
                (other, bodies[9 + seq], seq),
            )
        conn.execute(
            "UPDATE modkit_outbox_processor SET processed_seq = 2 WHERE partition_id = %s",
            (att0,),
        )
        # one retry due, one parked for later (not counted)
        for seq, due in ((1, "now() - interval '1 minute'"), (2, "now() + interval '1 hour'")):
            conn.execute(
                "INSERT INTO cleanup_worker_retries (partition_id, seq, payload, payload_type, "
                "created_at, deliveries, reason, not_before) VALUES "
                f"(%s, %s, '\\x7b7d'::bytea, 'application/json', now(), 1, 'timeout', {due})",
                (att0, seq),
            )
        assert conn.execute(query.encode()).fetchone() == (3 + 3 + 1,)


def _pod_specs() -> dict[str, dict[str, Any]]:
    job = _yaml("deploy/overlays/drain-job/job.yaml")
    cron = _yaml("deploy/overlays/drain-job/cronjob.yaml")
    return {
        "deployment": _yaml("deploy/base/deployment.yaml")["spec"]["template"]["spec"],
        "job": job["spec"]["template"]["spec"],
        "cronjob": cron["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    }


def _secret_mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """mount path -> secret name, for the secrets this container mounts."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    return {
        m["mountPath"]: secrets[m["name"]]
        for m in container["volumeMounts"]
        if m["name"] in secrets
    }


def test_migrate_and_the_worker_use_their_own_roles(tmp_path: Path) -> None:
    """Least privilege (SPEC §13): the migrate init container reads the DDL role's DSN from its
    own secret, the worker and drain containers the DML role's; neither sees the other's."""
    for name, pod in _pod_specs().items():
        (migrate,) = pod["initContainers"]
        for container in (migrate, *pod["containers"]):
            env = {e["name"]: e.get("value") for e in container["env"]}
            key = "MIGRATE_DSN_FILE" if container is migrate else "DSN_FILE"
            path = env[f"CLEANUP_WORKER__DATABASE__{key}"]
            secret = "cleanup-worker-db-migrate" if container is migrate else "cleanup-worker-db"
            mounted = _secret_mounts(pod, container)
            assert mounted.get(str(Path(path).parent)) == secret, (name, container["name"])
            other = ({"cleanup-worker-db", "cleanup-worker-db-migrate"} - {secret}).pop()
            assert other not in mounted.values(), (name, container["name"])
            assert "CLEANUP_WORKER_DSN" not in env, (name, container["name"])
    dsn_file, migrate_file = tmp_path / "dsn", tmp_path / "migrate-dsn"
    dsn_file.write_text("postgresql://cw_run:pw1@db.example/chat\n")
    migrate_file.write_text("postgresql://cw_migrate:pw2@db.example/chat\n")
    cfg = load_config(
        CONFIG,
        environ={
            "CLEANUP_WORKER__DATABASE__DSN_FILE": str(dsn_file),
            "CLEANUP_WORKER__DATABASE__MIGRATE_DSN_FILE": str(migrate_file),
        },
    )
    assert cfg.database.dsn == "postgresql://cw_run:pw1@db.example/chat"
    assert cfg.database.migrate_dsn == "postgresql://cw_migrate:pw2@db.example/chat"
