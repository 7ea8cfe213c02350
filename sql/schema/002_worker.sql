-- The worker's own tables (prefix cleanup_worker_). The chat service's tables are never reshaped.

-- Messages parked for a later delivery (SPEC §4.5). A retry never blocks its partition: the
-- cursor moves past the message and the message waits here with its own copy of the payload,
-- so vacuum may delete the outbox rows. Leased per row with FOR UPDATE SKIP LOCKED.
CREATE TABLE IF NOT EXISTS cleanup_worker_retries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition_id    BIGINT NOT NULL REFERENCES modkit_outbox_partitions (id),
    seq             BIGINT NOT NULL,
    payload         BYTEA NOT NULL,
    payload_type    VARCHAR(1024) NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    deliveries      INT NOT NULL CHECK (deliveries >= 1),
    reason          VARCHAR(32) NOT NULL,
    last_error      TEXT,
    not_before      TIMESTAMPTZ NOT NULL,
    dead_letter_id  BIGINT,
    locked_by       VARCHAR(1024),
    locked_until    TIMESTAMPTZ,
    first_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (partition_id, seq)
);
CREATE INDEX IF NOT EXISTS idx_cleanup_worker_retries_not_before
    ON cleanup_worker_retries (not_before);

-- A dead letter replayed by an operator: links the re-enqueued body to its dead letter, so the
-- dead letter ends 'resolved' when the message succeeds, or returns to 'pending' when it fails.
CREATE TABLE IF NOT EXISTS cleanup_worker_replays (
    body_id        BIGINT PRIMARY KEY,
    dead_letter_id BIGINT NOT NULL
);
