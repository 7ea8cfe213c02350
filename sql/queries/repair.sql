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

-- name: pending_dead_letters_of_queues
-- Pending dead letters of the worker's queues, with their payload to see what they point at.
SELECT d.id, p.queue, d.payload, d.payload_type
FROM modkit_outbox_dead_letters d
JOIN modkit_outbox_partitions p ON p.id = d.partition_id
WHERE d.status = 'pending' AND p.queue = ANY(%(queues)s)
ORDER BY d.id;

-- name: chat_cleanup_states
-- Per chat: soft-deleted or not, and whether its cleanup is unfinished (an attachment pending or
-- failed or never taken into cleanup, or its vector-store row left). Missing chats: no row.
SELECT c.id, c.tenant_id, c.deleted_at IS NOT NULL AS deleted,
       (EXISTS (SELECT 1 FROM attachments a
                WHERE a.chat_id = c.id
                  AND (a.cleanup_status IS DISTINCT FROM 'done'))
        OR EXISTS (SELECT 1 FROM chat_vector_stores v WHERE v.chat_id = c.id)) AS unfinished
FROM chats c
WHERE c.id = ANY(%(chat_ids)s::uuid[]);

-- name: attachment_cleanup_states
-- Per attachment: what a dead letter is checked against (its row is the truth). Missing rows
-- (purged with their chat): no row.
SELECT a.id, a.tenant_id, a.chat_id, a.provider_file_id, a.cleanup_status,
       a.deleted_at IS NOT NULL OR c.deleted_at IS NOT NULL AS deleted
FROM attachments a
LEFT JOIN chats c ON c.id = a.chat_id
WHERE a.id = ANY(%(attachment_ids)s::uuid[]);

-- name: resolve_dead_letters
-- Dead letters whose cleanup is finished by other means: pending -> resolved.
UPDATE modkit_outbox_dead_letters
SET status = 'resolved', completed_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND status = 'pending'
RETURNING id;
