-- Indexes the worker's statements need on the chat service's tables (its own schema lacks them).
-- `cleanup-worker migrate` builds each one with CREATE INDEX CONCURRENTLY, outside its
-- transaction, so the chat service's writes go on while it builds (also after
-- `--with-app-schema`: this file is the only place they are defined). With
-- `migrate --skip-app-indexes` a DBA runs these statements instead (docs/deploy.md, "Indexes on
-- the chat service's tables"); `check-config` and `status` name any that is missing or invalid.
-- One block per index: the block's name is the index's name, its first comment line what it
-- is for (check-config and status quote it), its statement the definition.

-- name: idx_attachments_cleanup_debt
-- the backlog gauges count cleanup debt every few seconds
-- (pending and failed rows: few, however large the table).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_attachments_cleanup_debt
    ON attachments (cleanup_status) WHERE cleanup_status IN ('pending', 'failed');

-- name: idx_attachments_chat_status
-- every chat cleanup reads its chat's attachments three times
-- (adopts those whose cleanup never started, cleanup_status NULL; reads the pending ones;
-- counts the unfinished), each by chat_id.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_attachments_chat_status
    ON attachments (chat_id, cleanup_status);

-- name: idx_attachments_live_provider_file
-- before each file delete: does a live attachment still reference this file?
-- (SPEC §13, once per file, on both paths). Only rows not soft-deleted can be live, so it
-- holds just those.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_attachments_live_provider_file
    ON attachments (provider_file_id) WHERE deleted_at IS NULL AND provider_file_id IS NOT NULL;
