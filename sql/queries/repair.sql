-- `cleanup-worker retry-failed`: turn failed cleanup debt back into work.

-- name: reset_failed_attachments
-- failed -> pending with a fresh attempt budget (the last error is kept for the record).
UPDATE attachments
SET cleanup_status = 'pending', cleanup_attempts = 0, cleanup_updated_at = now()
WHERE cleanup_status = 'failed'
  AND (%(chat_id)s::uuid IS NULL OR chat_id = %(chat_id)s::uuid)
RETURNING id, tenant_id, chat_id, provider_file_id, storage_backend, attachment_kind;

-- name: deleted_chats_with_debt
-- Deleted chats whose cleanup is unfinished: pending attachments or a vector-store row left.
SELECT c.id, c.tenant_id FROM chats c
WHERE c.deleted_at IS NOT NULL
  AND (%(chat_id)s::uuid IS NULL OR c.id = %(chat_id)s::uuid)
  AND (EXISTS (SELECT 1 FROM attachments a
               WHERE a.chat_id = c.id AND a.cleanup_status = 'pending')
       OR EXISTS (SELECT 1 FROM chat_vector_stores v WHERE v.chat_id = c.id));
