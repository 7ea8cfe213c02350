-- `cleanup-worker reconcile` (SPEC §14): a provider listing page against the database, one
-- set-based statement per page, and --apply's hand-back to the normal cleanup path.

-- name: file_references
-- Every attachment row referencing one of a listing page's file ids, with its state:
--   live       not soft-deleted and its chat not deleted: the file must stay
--   in_flight  cleanup may still be under way: not finished (NULL or pending) and deleted, or
--              last touched by cleanup, within the grace period
-- A file id no row references has no row here. Without an index on provider_file_id over
-- deleted rows this reads the attachments table once per page (docs/migrating.md).
SELECT a.provider_file_id, a.id, a.tenant_id, a.chat_id, a.storage_backend, a.cleanup_status,
       a.deleted_at IS NULL AND c.deleted_at IS NULL AS live,
       c.deleted_at IS NOT NULL AS chat_deleted,
       coalesce(a.cleanup_status, 'pending') = 'pending'
           AND greatest(a.deleted_at, c.deleted_at, a.cleanup_updated_at)
               > now() - make_interval(secs => %(grace_seconds)s) AS in_flight
FROM attachments a
JOIN chats c ON c.id = a.chat_id
WHERE a.provider_file_id = ANY(%(file_ids)s::text[]);

-- name: vector_store_references
-- The chat_vector_stores rows of a listing page's vector-store ids, with their chat's state.
SELECT v.vector_store_id, v.chat_id, v.tenant_id, v.provider,
       c.deleted_at IS NOT NULL AS chat_deleted,
       c.deleted_at > now() - make_interval(secs => %(grace_seconds)s) AS in_flight
FROM chat_vector_stores v
JOIN chats c ON c.id = v.chat_id
WHERE v.vector_store_id = ANY(%(vector_store_ids)s::text[]);

-- name: reconcile_reset_attachments
-- --apply: leaked files' rows back to pending with a fresh attempt budget (whatever their
-- status said: NULL, done or failed), only while they are still not live. Returns what the
-- cleanup messages carry, and whether the chat path owns the row (its chat is deleted).
UPDATE attachments a
SET cleanup_status = 'pending', cleanup_attempts = 0, cleanup_updated_at = now(),
    last_cleanup_error = 'reconcile: the file was still at the provider'
FROM chats c
WHERE a.id = ANY(%(attachment_ids)s::uuid[]) AND c.id = a.chat_id
  AND (a.deleted_at IS NOT NULL OR c.deleted_at IS NOT NULL)
RETURNING a.id, a.tenant_id, a.chat_id, a.provider_file_id, a.storage_backend,
          a.attachment_kind, c.deleted_at IS NOT NULL AS chat_deleted;

-- name: deleted_chats_of
-- --apply: which of these chats are (still) soft-deleted, with their tenant.
SELECT id, tenant_id FROM chats
WHERE id = ANY(%(chat_ids)s::uuid[]) AND deleted_at IS NOT NULL;

-- name: insert_receipt
-- A receipt with no row to complete: an unreferenced file deleted by reconcile
-- --delete-unreferenced (tenant NULL on a backend's shared route: no row names one).
INSERT INTO cleanup_worker_receipts (
    object_kind, object_id, tenant_id, chat_id, attachment_id, backend, route, http_status,
    outcome, request_id, worker_id)
VALUES ('file', %(object_id)s, %(tenant_id)s::uuid, NULL, NULL, %(backend)s, %(route)s,
        %(http_status)s, %(outcome)s, %(request_id)s, %(worker_id)s);

-- name: record_reconcile_report
-- The run's counts (and the whole report) for the daemon's leak gauge and for the record.
INSERT INTO cleanup_worker_reconcile_reports (
    leaked_files, leaked_vector_stores, unreferenced_files, routes_failed, applied, report)
VALUES (%(leaked_files)s, %(leaked_vector_stores)s, %(unreferenced_files)s,
        %(routes_failed)s, %(applied)s, %(report)s::jsonb);

-- name: latest_reconcile_report
-- The newest report: what the leak gauge shows (no row: reconcile never ran).
SELECT leaked_files, leaked_vector_stores, unreferenced_files, routes_failed,
       extract(epoch FROM finished_at)::float8
FROM cleanup_worker_reconcile_reports
ORDER BY id DESC
LIMIT 1;
