-- Outbox engine statements. Loaded once by worker.db.queries: each block starts with
-- "-- name: <name>", then one comment line saying what it is for, then the statement.
-- Locking SELECTs live in CTEs: an UPDATE ... WHERE id IN (SELECT ... SKIP LOCKED LIMIT n)
-- can touch more than n rows.

-- name: queue_partitions
-- Partition ids of a queue, by partition index.
SELECT id, partition FROM modkit_outbox_partitions WHERE queue = %(queue)s ORDER BY partition;

-- name: insert_partitions
-- Register a queue's partitions (idempotent).
INSERT INTO modkit_outbox_partitions (queue, partition)
SELECT %(queue)s, g FROM generate_series(0, %(partitions)s - 1) AS g
ON CONFLICT (queue, partition) DO NOTHING;

-- name: insert_processors
-- One cursor/lease row per partition of the queue (idempotent).
INSERT INTO modkit_outbox_processor (partition_id)
SELECT id FROM modkit_outbox_partitions WHERE queue = %(queue)s
ON CONFLICT (partition_id) DO NOTHING;

-- name: insert_vacuum_counters
-- One vacuum counter per partition of the queue (idempotent).
INSERT INTO modkit_outbox_vacuum_counter (partition_id)
SELECT id FROM modkit_outbox_partitions WHERE queue = %(queue)s
ON CONFLICT (partition_id) DO NOTHING;

-- name: enqueue
-- Body + incoming row in the caller's transaction.
WITH body AS (
    INSERT INTO modkit_outbox_body (payload, payload_type)
    VALUES (%(payload)s, %(payload_type)s)
    RETURNING id
)
INSERT INTO modkit_outbox_incoming (partition_id, body_id)
SELECT %(partition_id)s, body.id FROM body
RETURNING id;

-- name: sequence_partition
-- Move up to n incoming rows of one partition to outgoing with dense seqs, in id order. Skips a
-- partition another sequencer (ours or the chat service's) holds; safe beside them.
WITH part AS (
    SELECT id, sequence FROM modkit_outbox_partitions
    WHERE id = %(partition_id)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT i.id, i.body_id FROM modkit_outbox_incoming i
    WHERE i.partition_id = (SELECT id FROM part)
    ORDER BY i.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), removed AS (
    DELETE FROM modkit_outbox_incoming i USING picked WHERE i.id = picked.id
    RETURNING i.id, i.body_id
), numbered AS (
    SELECT removed.body_id, part.sequence + row_number() OVER (ORDER BY removed.id) AS seq
    FROM removed, part
), bumped AS (
    UPDATE modkit_outbox_partitions p
    SET sequence = p.sequence + (SELECT count(*) FROM numbered)
    FROM part
    WHERE p.id = part.id AND EXISTS (SELECT 1 FROM numbered)
), inserted AS (
    INSERT INTO modkit_outbox_outgoing (partition_id, body_id, seq)
    SELECT %(partition_id)s, body_id, seq FROM numbered
    RETURNING seq
)
SELECT count(*) AS sequenced FROM inserted;

-- name: partitions_with_incoming
-- Partitions of the given queues that have rows waiting for the sequencer.
SELECT p.id FROM modkit_outbox_partitions p
WHERE p.queue = ANY(%(queues)s)
  AND EXISTS (SELECT 1 FROM modkit_outbox_incoming i WHERE i.partition_id = p.id);

-- name: lease_partitions
-- Lease up to n free (or expired) partitions of a queue that have unprocessed messages.
-- Partitions without work are never written to, so idle polls raise no attempts.
WITH candidate AS (
    SELECT pr.partition_id FROM modkit_outbox_processor pr
    JOIN modkit_outbox_partitions p ON p.id = pr.partition_id
    WHERE p.queue = %(queue)s
      AND (pr.locked_by IS NULL OR pr.locked_until < now())
      AND EXISTS (
          SELECT 1 FROM modkit_outbox_outgoing o
          WHERE o.partition_id = pr.partition_id AND o.seq > pr.processed_seq
      )
    ORDER BY random()
    LIMIT %(limit)s
    FOR UPDATE OF pr SKIP LOCKED
)
UPDATE modkit_outbox_processor pr
SET locked_by = %(worker_id)s,
    locked_until = now() + make_interval(secs => %(lease_seconds)s),
    attempts = pr.attempts + 1
FROM candidate, modkit_outbox_partitions p
WHERE pr.partition_id = candidate.partition_id AND p.id = candidate.partition_id
RETURNING pr.partition_id, p.partition, pr.processed_seq, pr.attempts;

-- name: read_batch
-- The next messages after the cursor, with the dead letter they replay, if any.
SELECT o.seq, b.payload, b.payload_type, b.created_at, r.dead_letter_id
FROM modkit_outbox_outgoing o
JOIN modkit_outbox_body b ON b.id = o.body_id
LEFT JOIN cleanup_worker_replays r ON r.body_id = o.body_id
WHERE o.partition_id = %(partition_id)s AND o.seq > %(after_seq)s
ORDER BY o.seq
LIMIT %(limit)s;

-- name: extend_lease
-- Heartbeat: keep a partition while this acquisition of the lease still holds it. A lease is
-- identified by holder AND the attempts it set: the same process may lease a partition again
-- after its own lease expired, and the stale batch must not act under the new lease.
UPDATE modkit_outbox_processor
SET locked_until = now() + make_interval(secs => %(lease_seconds)s)
WHERE partition_id = %(partition_id)s AND locked_by = %(worker_id)s
  AND attempts = %(attempts)s
RETURNING partition_id;

-- name: release_lease
-- Give a partition back without progress (nothing to do, or shutting down): no attempt counted.
UPDATE modkit_outbox_processor
SET attempts = greatest(attempts - 1, 0), locked_by = NULL, locked_until = NULL
WHERE partition_id = %(partition_id)s AND locked_by = %(worker_id)s
  AND attempts = %(attempts)s;

-- name: advance_cursor
-- The ack guard: move the cursor past the batch and release, only while we hold the lease.
WITH acked AS (
    UPDATE modkit_outbox_processor
    SET processed_seq = %(last_seq)s, attempts = 0, last_error = NULL,
        locked_by = NULL, locked_until = NULL
    WHERE partition_id = %(partition_id)s AND locked_by = %(worker_id)s
      AND attempts = %(attempts)s
    RETURNING partition_id
), counted AS (
    UPDATE modkit_outbox_vacuum_counter v SET counter = v.counter + 1
    FROM acked WHERE v.partition_id = acked.partition_id
)
SELECT count(*) AS acked FROM acked;

-- name: record_outcomes
-- Persist non-trivial outcomes of a batch in one statement: dead letters (new, or a replayed
-- one back to pending), replayed dead letters resolved, retries parked or re-parked, finished
-- retry rows removed. Runs in the ack transaction, after its guard.
WITH o AS (
    SELECT * FROM unnest(
        %(partition_ids)s::bigint[], %(seqs)s::bigint[], %(payloads)s::bytea[],
        %(payload_types)s::text[], %(created_ats)s::timestamptz[], %(kinds)s::text[],
        %(reasons)s::text[], %(errors)s::text[], %(delays)s::float8[], %(deliveries)s::int[],
        %(dead_letter_ids)s::bigint[]
    ) AS t(partition_id, seq, payload, payload_type, created_at, kind, reason, error, delay,
           deliveries, dead_letter_id)
), new_dead AS (
    INSERT INTO modkit_outbox_dead_letters
        (partition_id, seq, payload, payload_type, created_at, last_error, attempts)
    SELECT partition_id, seq, payload, payload_type, created_at, error, least(deliveries, 32767)
    FROM o WHERE kind = 'reject' AND dead_letter_id IS NULL
    RETURNING id
), dead_again AS (
    UPDATE modkit_outbox_dead_letters d
    SET status = 'pending', attempts = least(d.attempts + 1, 32767), failed_at = now(),
        last_error = o.error, deadline = NULL
    FROM o WHERE o.kind = 'reject' AND d.id = o.dead_letter_id
    RETURNING d.id
), resolved AS (
    UPDATE modkit_outbox_dead_letters d
    SET status = 'resolved', completed_at = now(), deadline = NULL
    FROM o WHERE o.kind = 'ok' AND d.id = o.dead_letter_id AND d.status = 'reprocessing'
    RETURNING d.id
), parked AS (
    INSERT INTO cleanup_worker_retries
        (partition_id, seq, payload, payload_type, created_at, deliveries, reason, last_error,
         not_before, dead_letter_id)
    SELECT partition_id, seq, payload, payload_type, created_at, deliveries, reason, error,
           now() + make_interval(secs => delay), dead_letter_id
    FROM o WHERE kind = 'retry'
    ON CONFLICT (partition_id, seq) DO UPDATE
    SET deliveries = EXCLUDED.deliveries, reason = EXCLUDED.reason,
        last_error = EXCLUDED.last_error, not_before = EXCLUDED.not_before,
        locked_by = NULL, locked_until = NULL, updated_at = now()
    RETURNING id
), finished AS (
    DELETE FROM cleanup_worker_retries r USING o
    WHERE o.kind IN ('ok', 'reject') AND r.partition_id = o.partition_id AND r.seq = o.seq
    RETURNING r.id
)
SELECT (SELECT count(*) FROM new_dead) + (SELECT count(*) FROM dead_again) AS dead_lettered,
       (SELECT count(*) FROM parked) AS parked,
       (SELECT count(*) FROM resolved) AS resolved;

-- name: lease_due_retries
-- Lease up to n parked messages whose time has come, oldest due first; counts a delivery,
-- except for a message parked only for its tenant's fair turn (reason 'deferred': it was not
-- handled, so it used none).
WITH due AS (
    SELECT r.id FROM cleanup_worker_retries r
    JOIN modkit_outbox_partitions p ON p.id = r.partition_id
    WHERE p.queue = ANY(%(queues)s)
      AND r.not_before <= now()
      AND (r.locked_by IS NULL OR r.locked_until < now())
    ORDER BY r.not_before
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE cleanup_worker_retries r
SET locked_by = %(worker_id)s,
    locked_until = now() + make_interval(secs => %(lease_seconds)s),
    deliveries = r.deliveries + CASE WHEN r.reason = 'deferred' THEN 0 ELSE 1 END,
    updated_at = now()
FROM due, modkit_outbox_partitions p
WHERE r.id = due.id AND p.id = r.partition_id
RETURNING r.id, p.queue, p.partition, r.partition_id, r.seq, r.payload, r.payload_type,
          r.created_at, r.deliveries, r.dead_letter_id;

-- name: extend_retry_leases
-- Heartbeat for leased retry rows; returns the ones this process still holds.
UPDATE cleanup_worker_retries
SET locked_until = now() + make_interval(secs => %(lease_seconds)s)
WHERE id = ANY(%(ids)s) AND locked_by = %(worker_id)s
RETURNING id;

-- name: lock_own_retries
-- The retrier's ack guard: the leased rows this process still holds, locked for the ack.
SELECT id FROM cleanup_worker_retries
WHERE id = ANY(%(ids)s) AND locked_by = %(worker_id)s
FOR UPDATE;

-- name: vacuum_candidates
-- Partitions that advanced their cursor since the last vacuum.
SELECT partition_id, counter FROM modkit_outbox_vacuum_counter
WHERE counter > 0 ORDER BY partition_id;

-- name: vacuum_chunk
-- Delete one chunk of processed outgoing rows of a partition, with their bodies and replay links.
WITH doomed AS (
    SELECT o.id, o.body_id FROM modkit_outbox_outgoing o
    JOIN modkit_outbox_processor pr ON pr.partition_id = o.partition_id
    WHERE o.partition_id = %(partition_id)s AND o.seq <= pr.processed_seq
    ORDER BY o.seq
    LIMIT %(limit)s
    FOR UPDATE OF o SKIP LOCKED
), gone AS (
    DELETE FROM modkit_outbox_outgoing o USING doomed WHERE o.id = doomed.id
    RETURNING o.body_id
), unlinked AS (
    DELETE FROM cleanup_worker_replays r USING gone WHERE r.body_id = gone.body_id
), bodies AS (
    DELETE FROM modkit_outbox_body b USING gone WHERE b.id = gone.body_id
)
SELECT count(*) AS deleted FROM gone;

-- name: vacuum_settle
-- Subtract what this vacuum pass saw; acks that came in meanwhile keep the counter positive.
UPDATE modkit_outbox_vacuum_counter
SET counter = greatest(counter - %(seen)s, 0)
WHERE partition_id = %(partition_id)s;
