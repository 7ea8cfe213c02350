-- Deletion receipts (SPEC §14): `cleanup-worker receipts` and their pruning by vacuum.

-- name: list_receipts
-- Newest first; every filter is optional (NULL: no filter).
SELECT id, object_kind, object_id, tenant_id, chat_id, attachment_id, backend, route,
       http_status, outcome, request_id, deleted_at, worker_id
FROM cleanup_worker_receipts
WHERE (%(tenant_id)s::uuid IS NULL OR tenant_id = %(tenant_id)s::uuid)
  AND (%(chat_id)s::uuid IS NULL OR chat_id = %(chat_id)s::uuid)
  AND (%(attachment_id)s::uuid IS NULL OR attachment_id = %(attachment_id)s::uuid)
  AND (%(since)s::timestamptz IS NULL OR deleted_at >= %(since)s::timestamptz)
ORDER BY deleted_at DESC, id DESC
LIMIT %(limit)s;

-- name: prune_receipts_chunk
-- Delete up to %(limit)s receipts older than the retention, oldest first; returns how many.
-- Bounded, so one vacuum tick never holds a long transaction over a big backlog.
WITH old AS (
    SELECT id FROM cleanup_worker_receipts
    WHERE deleted_at < now() - make_interval(days => %(retention_days)s)
    ORDER BY deleted_at
    LIMIT %(limit)s
),
gone AS (
    DELETE FROM cleanup_worker_receipts r USING old WHERE r.id = old.id RETURNING 1
)
SELECT count(*) FROM gone;

-- name: prune_reconcile_reports
-- Reconcile reports past the same retention; the newest always stays (the gauge reads it).
DELETE FROM cleanup_worker_reconcile_reports
WHERE finished_at < now() - make_interval(days => %(retention_days)s)
  AND id < (SELECT max(id) FROM cleanup_worker_reconcile_reports);
