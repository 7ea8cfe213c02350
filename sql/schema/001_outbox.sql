-- The outbox tables of the original library (modkit-db 0.8.1, migration
-- m001_create_modkit_outbox_schema): same names, columns and types, so a database the chat
-- service already created works unchanged. Everything is IF NOT EXISTS; nothing is renamed.

CREATE TABLE IF NOT EXISTS modkit_outbox_body (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload      BYTEA NOT NULL,
    payload_type VARCHAR(1024) NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS modkit_outbox_partitions (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue     VARCHAR(1024) NOT NULL,
    partition SMALLINT NOT NULL,
    sequence  BIGINT NOT NULL DEFAULT 0,
    UNIQUE (queue, partition)
);

CREATE TABLE IF NOT EXISTS modkit_outbox_incoming (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition_id BIGINT NOT NULL REFERENCES modkit_outbox_partitions (id),
    body_id      BIGINT NOT NULL REFERENCES modkit_outbox_body (id)
);
CREATE INDEX IF NOT EXISTS idx_modkit_outbox_incoming_partition
    ON modkit_outbox_incoming (partition_id, id);
CREATE INDEX IF NOT EXISTS idx_modkit_outbox_incoming_body ON modkit_outbox_incoming (body_id);

CREATE TABLE IF NOT EXISTS modkit_outbox_outgoing (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition_id BIGINT NOT NULL REFERENCES modkit_outbox_partitions (id),
    body_id      BIGINT NOT NULL REFERENCES modkit_outbox_body (id),
    seq          BIGINT NOT NULL,
    sequenced_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_modkit_outbox_outgoing_partition_seq
    ON modkit_outbox_outgoing (partition_id, seq);
CREATE INDEX IF NOT EXISTS idx_modkit_outbox_outgoing_body ON modkit_outbox_outgoing (body_id);

CREATE TABLE IF NOT EXISTS modkit_outbox_dead_letters (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition_id BIGINT NOT NULL REFERENCES modkit_outbox_partitions (id),
    seq          BIGINT NOT NULL,
    payload      BYTEA NOT NULL,
    payload_type VARCHAR(1024) NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    failed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error   TEXT,
    attempts     SMALLINT NOT NULL,
    status       VARCHAR(32) NOT NULL DEFAULT 'pending',
    completed_at TIMESTAMPTZ,
    deadline     TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS idx_modkit_outbox_dead_letters_claimable
    ON modkit_outbox_dead_letters (status, deadline) WHERE status IN ('pending', 'reprocessing');
CREATE INDEX IF NOT EXISTS idx_modkit_outbox_dead_letters_status_failed
    ON modkit_outbox_dead_letters (status, failed_at DESC);

-- One row per partition: the cursor (processed_seq) and the lease (locked_by/locked_until).
CREATE TABLE IF NOT EXISTS modkit_outbox_processor (
    partition_id  BIGINT PRIMARY KEY REFERENCES modkit_outbox_partitions (id),
    processed_seq BIGINT NOT NULL DEFAULT 0,
    attempts      SMALLINT NOT NULL DEFAULT 0,
    last_error    TEXT,
    locked_by     VARCHAR(1024),
    locked_until  TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS modkit_outbox_vacuum_counter (
    partition_id BIGINT PRIMARY KEY REFERENCES modkit_outbox_partitions (id),
    counter      BIGINT NOT NULL DEFAULT 0
);
