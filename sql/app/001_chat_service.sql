-- The chat service's tables that cleanup reads and writes (cf-mini-chat 0.1.29 columns).
-- Production databases already have them; applied only with `migrate --with-app-schema`
-- (tests, the demo, new installs), with the indexes the chat service's own schema creates.
-- Where this file creates the attachments table it adds the cleanup_status CHECK that the
-- original design required but its migration left out.

CREATE TABLE IF NOT EXISTS chats (
    id           UUID PRIMARY KEY,
    tenant_id    UUID NOT NULL,
    user_id      UUID NOT NULL,
    model        VARCHAR(1024) NOT NULL,
    title        VARCHAR(255),
    is_temporary BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    deleted_at   TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS idx_chats_owner_updated
    ON chats (tenant_id, user_id, updated_at DESC) WHERE deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS attachments (
    id                   UUID PRIMARY KEY,
    tenant_id            UUID NOT NULL,
    chat_id              UUID NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    uploaded_by_user_id  UUID NOT NULL,
    filename             VARCHAR(255) NOT NULL,
    content_type         VARCHAR(128) NOT NULL,
    size_bytes           BIGINT NOT NULL CHECK (size_bytes >= 0),
    storage_backend      VARCHAR(32) NOT NULL DEFAULT 'azure',
    provider_file_id     VARCHAR(128),
    status               VARCHAR(16) NOT NULL
        CHECK (status IN ('pending', 'uploaded', 'ready', 'failed')),
    error_code           VARCHAR(64),
    attachment_kind      VARCHAR(16) NOT NULL CHECK (attachment_kind IN ('document', 'image')),
    for_file_search      BOOLEAN NOT NULL DEFAULT FALSE,
    for_code_interpreter BOOLEAN NOT NULL DEFAULT FALSE,
    doc_summary          TEXT,
    img_thumbnail        BYTEA,
    img_thumbnail_width  INT,
    img_thumbnail_height INT,
    summary_model        VARCHAR(1024),
    summary_updated_at   TIMESTAMPTZ,
    cleanup_status       VARCHAR(16)
        CHECK (cleanup_status IN ('pending', 'done', 'failed')),
    cleanup_attempts     INT NOT NULL DEFAULT 0 CHECK (cleanup_attempts >= 0),
    last_cleanup_error   TEXT,
    cleanup_updated_at   TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at           TIMESTAMPTZ,
    UNIQUE (id, chat_id)
);
CREATE INDEX IF NOT EXISTS idx_attachments_tenant_chat
    ON attachments (tenant_id, chat_id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_attachments_cleanup
    ON attachments (cleanup_status) WHERE cleanup_status IS NOT NULL AND deleted_at IS NULL;
-- The indexes the worker's statements need beyond these two (the chat service's own) are in
-- sql/app_indexes: migrate builds them CONCURRENTLY after this file, unless --skip-app-indexes.

-- The original has composite FKs to messages(id, chat_id); the worker only needs the links.
CREATE TABLE IF NOT EXISTS message_attachments (
    tenant_id     UUID NOT NULL,
    chat_id       UUID NOT NULL,
    message_id    UUID NOT NULL,
    attachment_id UUID NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, message_id, attachment_id),
    FOREIGN KEY (attachment_id, chat_id) REFERENCES attachments (id, chat_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS idx_message_attachments_attachment
    ON message_attachments (attachment_id);

CREATE TABLE IF NOT EXISTS chat_vector_stores (
    id              UUID PRIMARY KEY,
    tenant_id       UUID NOT NULL,
    chat_id         UUID NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    vector_store_id VARCHAR(128),
    provider        VARCHAR(128) NOT NULL,
    file_count      INT NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (tenant_id, chat_id)
);
