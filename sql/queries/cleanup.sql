-- The cleanup handlers' reads and writes on the chat service's tables (system scope: no tenant
-- filter, as in the original repositories). Every write is a compare-and-set on cleanup_status,
-- so a redelivered message or both paths touching one attachment end in the same state.

-- name: chat_is_deleted
-- True when the chat exists and is soft-deleted (a missing chat is not "deleted").
SELECT EXISTS (
    SELECT 1 FROM chats WHERE id = %(chat_id)s AND deleted_at IS NOT NULL
) AS deleted;

-- name: take_attachment
-- The attachment path's one read-and-take (SPEC §13: the row is the truth). Always one row:
-- the attachment row (all NULL when it no longer exists), as the take left it when taken, and
--   taken: the row passed every check below under its row lock and is now in cleanup
--          (NULL -> pending; a pending or failed row stays as it is; a row without a provider
--          file has nothing left to do and turns done, so its message needs no second
--          statement). The checks: it agrees with the message on tenant, chat, backend and
--          file id, it is not live (soft-deleted, or its chat is), and it is not done. One
--          UPDATE is the compare-and-set: PostgreSQL re-evaluates the WHERE on the row's
--          newest version once it holds the row lock, so a restore committed before the take
--          is seen and nothing is taken.
--   chat_deleted: the message's chat is soft-deleted.
--   file_in_live_use: another live attachment (not soft-deleted, chat not deleted) references
--          the message's file id: that file must stay. Index-backed by
--          idx_attachments_live_provider_file (sql/app).
-- Both flags read the message's ids, not the row's: they are used only when the row was taken
-- (then both agree) or is gone, and as uncorrelated subqueries each runs once, on the index.
WITH taken AS (
    UPDATE attachments a
    SET cleanup_status = CASE
            WHEN a.provider_file_id IS NULL THEN 'done'  -- no file: the take finishes it
            ELSE coalesce(a.cleanup_status, 'pending')
        END,
        cleanup_updated_at = CASE
            WHEN a.cleanup_status IS NULL OR a.provider_file_id IS NULL THEN now()
            ELSE a.cleanup_updated_at
        END
    FROM chats c
    WHERE a.id = %(attachment_id)s AND c.id = a.chat_id
      AND a.cleanup_status IS DISTINCT FROM 'done'
      AND (a.deleted_at IS NOT NULL OR c.deleted_at IS NOT NULL)
      AND a.tenant_id = %(tenant_id)s AND a.chat_id = %(chat_id)s
      AND a.storage_backend = %(storage_backend)s
      AND a.provider_file_id IS NOT DISTINCT FROM %(provider_file_id)s
    RETURNING a.tenant_id, a.chat_id, a.storage_backend, a.provider_file_id, a.cleanup_status,
              a.deleted_at IS NOT NULL AS deleted, true AS taken
),
refused AS (
    -- FOR SHARE: when the take's re-check failed because another transaction changed the row
    -- after this statement's snapshot (a duplicate message finishing it, a restore), the
    -- locking read waits for it and returns the row's newest version, not the snapshot's; a
    -- plain read would show the old version and the refusal would look unexplained.
    SELECT a.tenant_id, a.chat_id, a.storage_backend, a.provider_file_id, a.cleanup_status,
           a.deleted_at IS NOT NULL, false
    FROM attachments a
    WHERE a.id = %(attachment_id)s AND NOT EXISTS (SELECT 1 FROM taken)
    FOR SHARE OF a
),
found AS (
    SELECT * FROM taken
    UNION ALL
    SELECT * FROM refused
)
SELECT
    f.tenant_id, f.chat_id, f.storage_backend, f.provider_file_id, f.cleanup_status, f.deleted,
    coalesce(f.taken, false) AS taken,
    EXISTS (
        SELECT 1 FROM chats WHERE id = %(chat_id)s AND deleted_at IS NOT NULL
    ) AS chat_deleted,
    EXISTS (
        SELECT 1 FROM attachments o JOIN chats oc ON oc.id = o.chat_id
        WHERE o.provider_file_id = %(provider_file_id)s
          AND o.deleted_at IS NULL AND oc.deleted_at IS NULL
          AND o.id <> %(attachment_id)s
    ) AS file_in_live_use
FROM (SELECT 1) AS one LEFT JOIN found f ON true;

-- name: take_attachments
-- take_attachment for the messages of one event-loop turn (worker.db.batching), in one
-- statement that never waits for a lock, so it cannot take part in a deadlock however many
-- rows it names and in whatever order others lock them: each row is locked with SKIP LOCKED
-- and answered from its locked (newest) version, as take_attachment answers; a row another
-- transaction holds comes back busy (all NULL but busy), and the caller takes it with
-- take_attachment, which waits as it always did. Rows answer in input order (ordinality).
-- The row count is small (a batch), so every attachments access is by primary key, and the
-- live-file probe is take_attachment's (idx_attachments_live_provider_file).
WITH input AS (
    SELECT * FROM unnest(
        %(attachment_ids)s::uuid[], %(tenant_ids)s::uuid[], %(chat_ids)s::uuid[],
        %(storage_backends)s::text[], %(provider_file_ids)s::text[]
    ) WITH ORDINALITY AS i(attachment_id, tenant_id, chat_id, storage_backend, provider_file_id, n)
),
locked AS (
    SELECT a.id, a.tenant_id, a.chat_id, a.storage_backend, a.provider_file_id,
           a.cleanup_status, a.deleted_at IS NOT NULL AS deleted
    FROM attachments a
    WHERE a.id = ANY(%(attachment_ids)s::uuid[])
    FOR NO KEY UPDATE OF a SKIP LOCKED
),
taken AS (
    UPDATE attachments a
    SET cleanup_status = CASE
            WHEN a.provider_file_id IS NULL THEN 'done'  -- no file: the take finishes it
            ELSE coalesce(a.cleanup_status, 'pending')
        END,
        cleanup_updated_at = CASE
            WHEN a.cleanup_status IS NULL OR a.provider_file_id IS NULL THEN now()
            ELSE a.cleanup_updated_at
        END
    FROM input i, chats c
    WHERE a.id IN (SELECT id FROM locked) AND a.id = i.attachment_id AND c.id = a.chat_id
      AND a.cleanup_status IS DISTINCT FROM 'done'
      AND (a.deleted_at IS NOT NULL OR c.deleted_at IS NOT NULL)
      AND a.tenant_id = i.tenant_id AND a.chat_id = i.chat_id
      AND a.storage_backend = i.storage_backend
      AND a.provider_file_id IS NOT DISTINCT FROM i.provider_file_id
    RETURNING a.id, a.cleanup_status
)
SELECT
    l.tenant_id, l.chat_id, l.storage_backend, l.provider_file_id,
    coalesce(t.cleanup_status, l.cleanup_status) AS cleanup_status, l.deleted,
    t.id IS NOT NULL AS taken,
    EXISTS (
        SELECT 1 FROM chats WHERE id = i.chat_id AND deleted_at IS NOT NULL
    ) AS chat_deleted,
    EXISTS (
        SELECT 1 FROM attachments o JOIN chats oc ON oc.id = o.chat_id
        WHERE o.provider_file_id = i.provider_file_id
          AND o.deleted_at IS NULL AND oc.deleted_at IS NULL
          AND o.id <> i.attachment_id
    ) AS file_in_live_use,
    l.id IS NULL AND EXISTS (SELECT 1 FROM attachments b WHERE b.id = i.attachment_id) AS busy
FROM input i
LEFT JOIN locked l ON l.id = i.attachment_id
LEFT JOIN taken t ON t.id = i.attachment_id
ORDER BY i.n;

-- name: adopt_chat_attachments
-- The chat path owns every attachment of a deleted chat, also those deleted one by one earlier
-- whose own cleanup never started.
UPDATE attachments
SET cleanup_status = 'pending', cleanup_updated_at = now()
WHERE chat_id = %(chat_id)s AND cleanup_status IS NULL;

-- name: mark_cleanup_done
-- pending -> done; also failed -> done, because a delete the provider confirmed is the truth
-- (a replayed dead letter). Returns how many rows turned done: 0 when already done or missing.
-- A note (why the file was kept, not deleted) replaces last_cleanup_error; without one the
-- history stays. With a receipt (object_id not NULL: the provider said the file is gone) the
-- receipt is inserted by the same statement, so a done row never lacks its receipt (SPEC §14).
-- It is inserted even when no row turned done (a purged chat's row, a redelivery racing the
-- chat path): the provider call happened, and its receipt is the evidence.
WITH done AS (
    UPDATE attachments
    SET cleanup_status = 'done', cleanup_updated_at = now(),
        last_cleanup_error = coalesce(%(note)s, last_cleanup_error)
    WHERE id = %(attachment_id)s AND cleanup_status IN ('pending', 'failed')
    RETURNING 1
),
receipt AS (
    INSERT INTO cleanup_worker_receipts (
        object_kind, object_id, tenant_id, chat_id, attachment_id, backend, route,
        http_status, outcome, request_id, worker_id)
    SELECT 'file', %(object_id)s::text, %(tenant_id)s::uuid, %(chat_id)s::uuid,
           %(attachment_id)s::uuid, %(backend)s::text, %(route)s::text,
           %(http_status)s::smallint, %(outcome)s::text, %(request_id)s::text,
           %(worker_id)s::text
    WHERE %(object_id)s::text IS NOT NULL
)
SELECT count(*) FROM done;

-- name: mark_cleanups_done
-- mark_cleanup_done for the calls of one event-loop turn (worker.db.batching), in one
-- statement that never waits for a lock (as take_attachments): a row another transaction holds
-- comes back busy and gets neither its update nor its receipt here; the caller runs
-- mark_cleanup_done for it. Per input row, in input order: done (the row turned done), busy.
WITH input AS (
    SELECT * FROM unnest(
        %(attachment_ids)s::uuid[], %(notes)s::text[], %(object_ids)s::text[],
        %(tenant_ids)s::uuid[], %(chat_ids)s::uuid[], %(backends)s::text[], %(routes)s::text[],
        %(http_statuses)s::smallint[], %(outcomes)s::text[], %(request_ids)s::text[]
    ) WITH ORDINALITY AS i(attachment_id, note, object_id, tenant_id, chat_id, backend, route,
                           http_status, outcome, request_id, n)
),
locked AS (
    SELECT a.id FROM attachments a
    WHERE a.id = ANY(%(attachment_ids)s::uuid[])
    FOR NO KEY UPDATE OF a SKIP LOCKED
),
answered AS (
    -- Locked by this statement, or no row at all (a purged chat): settled here.
    SELECT i.*, l.id IS NULL AND EXISTS (
        SELECT 1 FROM attachments b WHERE b.id = i.attachment_id
    ) AS busy
    FROM input i LEFT JOIN locked l ON l.id = i.attachment_id
),
done AS (
    UPDATE attachments a
    SET cleanup_status = 'done', cleanup_updated_at = now(),
        last_cleanup_error = coalesce(i.note, a.last_cleanup_error)
    FROM answered i
    WHERE a.id IN (SELECT id FROM locked) AND a.id = i.attachment_id
      AND a.cleanup_status IN ('pending', 'failed')
    RETURNING a.id
),
receipt AS (
    INSERT INTO cleanup_worker_receipts (
        object_kind, object_id, tenant_id, chat_id, attachment_id, backend, route,
        http_status, outcome, request_id, worker_id)
    SELECT 'file', object_id, tenant_id, chat_id, attachment_id, backend, route, http_status,
           outcome, request_id, %(worker_id)s::text
    FROM answered WHERE object_id IS NOT NULL AND NOT busy
)
SELECT d.id IS NOT NULL AS done, i.busy
FROM answered i LEFT JOIN done d ON d.id = i.attachment_id
ORDER BY i.n;

-- name: record_cleanup_attempt
-- Count a failed attempt; the row turns 'failed' on the max-th one (or at once when permanent).
-- Returns the new status; no row when it was already terminal.
UPDATE attachments
SET cleanup_status = CASE
        WHEN %(permanent)s OR cleanup_attempts + 1 >= %(max_attempts)s THEN 'failed'
        ELSE 'pending'
    END,
    cleanup_attempts = cleanup_attempts + 1,
    last_cleanup_error = %(error)s,
    cleanup_updated_at = now()
WHERE id = %(attachment_id)s AND cleanup_status = 'pending'
RETURNING cleanup_status;

-- name: pending_attachments_of_chat
-- Attachments of a chat still waiting for cleanup, deleted individually or not, each with
-- whether it is live (not soft-deleted and its chat not deleted: the chat was restored) and
-- whether another live attachment references its file (index-backed, as in take_attachment).
-- A LATERAL ... LIMIT 1 probe per row, not EXISTS: the planner may not turn it into a hash of
-- every live attachment's file id.
SELECT a.id, a.tenant_id, a.storage_backend, a.provider_file_id,
       a.deleted_at IS NULL AND c.deleted_at IS NULL AS live,
       used.one IS NOT NULL AS file_in_live_use
FROM attachments a
JOIN chats c ON c.id = a.chat_id
LEFT JOIN LATERAL (
    SELECT 1 AS one FROM attachments o JOIN chats oc ON oc.id = o.chat_id
    WHERE o.provider_file_id = a.provider_file_id
      AND o.deleted_at IS NULL AND oc.deleted_at IS NULL AND o.id <> a.id
    LIMIT 1
) used ON true
WHERE a.chat_id = %(chat_id)s AND a.cleanup_status = 'pending'
ORDER BY a.id;

-- name: unfinished_attachments_of_chat
-- Attachments of a chat still pending (its vector store must wait) and terminally failed
-- (provider-file debt), counted together: one round trip before the vector-store delete.
SELECT
    count(*) FILTER (WHERE cleanup_status = 'pending') AS pending,
    count(*) FILTER (WHERE cleanup_status = 'failed') AS failed
FROM attachments
WHERE chat_id = %(chat_id)s AND cleanup_status IN ('pending', 'failed');

-- name: vector_store_of_chat
-- The chat's vector-store row: while it exists, vector-store cleanup is outstanding.
SELECT id, tenant_id, vector_store_id, provider
FROM chat_vector_stores WHERE chat_id = %(chat_id)s
LIMIT 1;

-- name: delete_vector_store_row
-- Hard-delete the vector-store row: the durable completion marker of a chat's cleanup. With a
-- receipt (object_id not NULL: the store was deleted at the provider) the receipt is inserted
-- by the same statement, so the row never disappears without its receipt (SPEC §14).
WITH gone AS (
    DELETE FROM chat_vector_stores WHERE id = %(id)s RETURNING 1
),
receipt AS (
    INSERT INTO cleanup_worker_receipts (
        object_kind, object_id, tenant_id, chat_id, attachment_id, backend, route,
        http_status, outcome, request_id, worker_id)
    SELECT 'vector_store', %(object_id)s::text, %(tenant_id)s::uuid, %(chat_id)s::uuid, NULL,
           %(backend)s::text, %(route)s::text, %(http_status)s::smallint, %(outcome)s::text,
           %(request_id)s::text, %(worker_id)s::text
    WHERE %(object_id)s::text IS NOT NULL
)
SELECT count(*) FROM gone;
