-- Per-message delivery bookkeeping (SPEC §13): which messages were being handled, alone, when
-- the process died. Written only for messages redelivered after a lease ended without an ack
-- (a crash, a lost lease): those are handled one at a time, "started" is committed before the
-- handler runs and "finished" after it returned, so started - finished counts the times
-- handling that very message killed the process. A row is deleted when the message's outcome
-- is persisted (the ack); nothing is written for a batch whose previous lease ended cleanly.
CREATE TABLE IF NOT EXISTS cleanup_worker_deliveries (
    partition_id BIGINT NOT NULL REFERENCES modkit_outbox_partitions (id),
    seq          BIGINT NOT NULL,
    started      INT NOT NULL DEFAULT 0 CHECK (started >= 0),
    finished     INT NOT NULL DEFAULT 0 CHECK (finished >= 0),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (partition_id, seq)
);
