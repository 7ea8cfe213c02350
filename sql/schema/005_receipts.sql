-- Deletion receipts and reconcile reports (SPEC §14).

-- One row per provider delete the worker made that ended "gone": the evidence that a user's
-- file or vector store was erased at the provider. Append-only: the worker only INSERTs, and
-- vacuum DELETEs rows older than audit.receipt_retention_days; nothing ever UPDATEs one.
-- Written in the same statement (so the same transaction) as the row update the delete
-- completes: an attachment turning 'done', a chat's vector-store row being hard-deleted.
--   outcome     'deleted' (this request removed it) or 'already_gone' (the API's own not-found)
--   route       the backend label, with "(tenant T)" when a tenant override answered
--   request_id  the provider's x-request-id response header (NULL when it sent none)
CREATE TABLE IF NOT EXISTS cleanup_worker_receipts (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object_kind   VARCHAR(16) NOT NULL CHECK (object_kind IN ('file', 'vector_store')),
    object_id     VARCHAR(128) NOT NULL,
    tenant_id     UUID,  -- NULL only for an unreferenced file deleted on a shared route
    chat_id       UUID,
    attachment_id UUID,
    backend       VARCHAR(32) NOT NULL,
    route         VARCHAR(128) NOT NULL,
    http_status   SMALLINT,
    outcome       VARCHAR(16) NOT NULL CHECK (outcome IN ('deleted', 'already_gone')),
    request_id    VARCHAR(128),
    deleted_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    worker_id     VARCHAR(1024) NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_cleanup_worker_receipts_deleted_at
    ON cleanup_worker_receipts (deleted_at);
CREATE INDEX IF NOT EXISTS idx_cleanup_worker_receipts_tenant
    ON cleanup_worker_receipts (tenant_id, deleted_at);
CREATE INDEX IF NOT EXISTS idx_cleanup_worker_receipts_chat
    ON cleanup_worker_receipts (chat_id) WHERE chat_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_cleanup_worker_receipts_attachment
    ON cleanup_worker_receipts (attachment_id) WHERE attachment_id IS NOT NULL;

-- The last reports of `cleanup-worker reconcile` (a one-shot job that cannot be scraped): the
-- daemon's gauge refresh reads the newest row into cleanup_leaks_found{kind}. Pruned with the
-- receipts' retention.
CREATE TABLE IF NOT EXISTS cleanup_worker_reconcile_reports (
    id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    finished_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    leaked_files         INT NOT NULL CHECK (leaked_files >= 0),
    leaked_vector_stores INT NOT NULL CHECK (leaked_vector_stores >= 0),
    unreferenced_files   INT NOT NULL CHECK (unreferenced_files >= 0),
    routes_failed        INT NOT NULL CHECK (routes_failed >= 0),
    applied              BOOLEAN NOT NULL,
    report               JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_cleanup_worker_reconcile_reports_finished
    ON cleanup_worker_reconcile_reports (finished_at);
