-- The demo's own statements (lab/cwlab/demo.py): building its world and reading the result.
-- Loaded by cwlab.queries with the product's parser; the product never reads this file.

-- name: relations_present
-- Relations in any schema but PostgreSQL's own: what an application (or an earlier demo) left.
SELECT count(*), min(format('%I.%I', n.nspname, c.relname))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%';

-- name: insert_chat
-- One live chat of a demo tenant.
INSERT INTO chats (id, tenant_id, user_id, model, title, created_at, updated_at)
VALUES (%(id)s, %(tenant_id)s, %(user_id)s, 'gpt-4o', 'demo chat', now(), now());

-- name: insert_attachment
-- One attachment of a demo chat (provider_file_id NULL: the upload never reached the provider).
INSERT INTO attachments (id, tenant_id, chat_id, uploaded_by_user_id, filename, content_type,
                         size_bytes, storage_backend, provider_file_id, status,
                         attachment_kind, created_at)
VALUES (%(id)s, %(tenant_id)s, %(chat_id)s, %(user_id)s, %(filename)s, %(content_type)s,
        %(size_bytes)s, %(storage_backend)s, %(provider_file_id)s, %(status)s,
        %(attachment_kind)s, now());

-- name: insert_vector_store
-- The vector store of a demo chat.
INSERT INTO chat_vector_stores (id, tenant_id, chat_id, vector_store_id, provider, created_at)
VALUES (%(id)s, %(tenant_id)s, %(chat_id)s, %(vector_store_id)s, %(provider)s, now());

-- name: attachment_outcomes
-- Every attachment cleanup touched, with its tenant and file: the summary's per-tenant counts.
SELECT tenant_id, provider_file_id, cleanup_status FROM attachments
WHERE cleanup_status IS NOT NULL;

-- name: vector_stores_left
-- Vector stores of deleted chats still there after the drain.
SELECT count(*) FROM chat_vector_stores v JOIN chats c ON c.id = v.chat_id
WHERE c.deleted_at IS NOT NULL;

-- name: pending_dead_letter_errors
-- Why each pending dead letter failed: the summary's reasons.
SELECT d.last_error FROM modkit_outbox_dead_letters d WHERE d.status = 'pending';
