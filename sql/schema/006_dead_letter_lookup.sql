-- The ack's dead-letter insert (record_outcomes in sql/queries/outbox.sql) writes one dead
-- letter per message and first looks for one already there by (partition_id, seq). Without
-- this index that lookup read the whole dead-letter table on every ack with a reject
-- (tests/outbox/test_hot_statements_explain.py). An index adds no column and renames nothing:
-- a database the chat service created works unchanged. Built in migrate's transaction (not
-- CONCURRENTLY): the dead-letter table is small next to the message tables, and only the
-- first migrate after an upgrade builds it.
CREATE INDEX IF NOT EXISTS idx_modkit_outbox_dead_letters_partition_seq
    ON modkit_outbox_dead_letters (partition_id, seq);
