-- The chat service's delete flows (seed: attachment_service.rs, chat_service delete_chat),
-- used by Python producers, the tests and the demo.

-- name: owned_active_chat
-- The chat, if it is the user's, in the tenant, and not deleted.
SELECT id FROM chats
WHERE id = %(chat_id)s AND tenant_id = %(tenant_id)s AND user_id = %(user_id)s
  AND deleted_at IS NULL;

-- name: attachment_in_tenant
-- An attachment of the tenant, soft-deleted or not, with what the cleanup event carries.
SELECT id, chat_id, uploaded_by_user_id, provider_file_id, storage_backend, attachment_kind,
       deleted_at
FROM attachments WHERE id = %(attachment_id)s AND tenant_id = %(tenant_id)s;

-- name: soft_delete_attachment
-- Soft-delete unless already deleted or referenced by a message.
UPDATE attachments a SET deleted_at = now(), updated_at = now()
WHERE a.id = %(attachment_id)s AND a.tenant_id = %(tenant_id)s AND a.deleted_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM message_attachments m WHERE m.attachment_id = a.id);

-- name: soft_delete_chat
-- Soft-delete the user's chat; no row when missing, foreign or already deleted.
UPDATE chats SET deleted_at = now(), updated_at = now()
WHERE id = %(chat_id)s AND tenant_id = %(tenant_id)s AND user_id = %(user_id)s
  AND deleted_at IS NULL
RETURNING deleted_at;

-- name: mark_attachments_pending_for_chat
-- Hand a deleted chat's live attachments to cleanup.
UPDATE attachments SET cleanup_status = 'pending', cleanup_updated_at = now()
WHERE chat_id = %(chat_id)s AND cleanup_status IS NULL AND deleted_at IS NULL;
