-- The cleanup handlers' reads and writes on the chat service's tables (system scope: no tenant
-- filter, as in the original repositories). Every write is a compare-and-set on cleanup_status,
-- so a redelivered message or both paths touching one attachment end in the same state.

-- name: chat_is_deleted
-- True when the chat exists and is soft-deleted (a missing chat is not "deleted").
SELECT EXISTS (
    SELECT 1 FROM chats WHERE id = %(chat_id)s AND deleted_at IS NOT NULL
) AS deleted;

-- name: take_attachment
-- Take a deleted attachment into cleanup (NULL -> pending; the original never did on this path)
-- and read whether its chat is soft-deleted, in one round trip. Always one row: cleanup_status
-- is NULL when the attachment no longer exists; chat_deleted as in chat_is_deleted.
WITH marked AS (
    UPDATE attachments
    SET cleanup_status = 'pending', cleanup_updated_at = now()
    WHERE id = %(attachment_id)s AND cleanup_status IS NULL
    RETURNING cleanup_status
)
SELECT
    coalesce(
        (SELECT cleanup_status FROM marked),
        (SELECT cleanup_status FROM attachments WHERE id = %(attachment_id)s)
    ) AS cleanup_status,
    EXISTS (
        SELECT 1 FROM chats WHERE id = %(chat_id)s AND deleted_at IS NOT NULL
    ) AS chat_deleted;

-- name: adopt_chat_attachments
-- The chat path owns every attachment of a deleted chat, also those deleted one by one earlier
-- whose own cleanup never started.
UPDATE attachments
SET cleanup_status = 'pending', cleanup_updated_at = now()
WHERE chat_id = %(chat_id)s AND cleanup_status IS NULL;

-- name: mark_cleanup_done
-- pending -> done; also failed -> done, because a delete the provider confirmed is the truth
-- (a replayed dead letter). 0 rows when already done or missing.
UPDATE attachments
SET cleanup_status = 'done', cleanup_updated_at = now()
WHERE id = %(attachment_id)s AND cleanup_status IN ('pending', 'failed');

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
-- Attachments of a chat still waiting for cleanup, deleted individually or not.
SELECT id, tenant_id, storage_backend, provider_file_id
FROM attachments
WHERE chat_id = %(chat_id)s AND cleanup_status = 'pending'
ORDER BY id;

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
-- Hard-delete the vector-store row: the durable completion marker of a chat's cleanup.
DELETE FROM chat_vector_stores WHERE id = %(id)s;
