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
-- Partitions without work are never written to, so idle polls raise no attempts. locked_by is
-- the fencing token: the worker id (unique per process boot) plus a random UUID per acquisition,
-- so an old acquisition of the same process can never pass as the current one.
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
SET locked_by = %(worker_id)s || '/' || gen_random_uuid(),
    locked_until = now() + make_interval(secs => %(lease_seconds)s),
    attempts = pr.attempts + 1
FROM candidate, modkit_outbox_partitions p
WHERE pr.partition_id = candidate.partition_id AND p.id = candidate.partition_id
RETURNING pr.partition_id, p.partition, pr.processed_seq, pr.attempts, pr.locked_by;

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
-- Heartbeat: keep a partition while this acquisition (its fencing token) still holds it.
UPDATE modkit_outbox_processor
SET locked_until = now() + make_interval(secs => %(lease_seconds)s)
WHERE partition_id = %(partition_id)s AND locked_by = %(token)s
RETURNING partition_id;

-- name: release_lease
-- Give a partition back without progress (nothing to do, or shutting down): no attempt counted.
UPDATE modkit_outbox_processor
SET attempts = greatest(attempts - 1, 0), locked_by = NULL, locked_until = NULL
WHERE partition_id = %(partition_id)s AND locked_by = %(token)s;

-- name: advance_cursor
-- The ack guard: move the cursor past the batch and release, only while this acquisition holds
-- the lease AND the cursor is still where its lease read it (a compare-and-set: never backwards,
-- never over a batch someone else acked).
WITH acked AS (
    UPDATE modkit_outbox_processor
    SET processed_seq = %(last_seq)s, attempts = 0, last_error = NULL,
        locked_by = NULL, locked_until = NULL
    WHERE partition_id = %(partition_id)s AND locked_by = %(token)s
      AND processed_seq = %(read_seq)s AND %(last_seq)s > %(read_seq)s
    RETURNING partition_id
), counted AS (
    UPDATE modkit_outbox_vacuum_counter v SET counter = v.counter + 1
    FROM acked WHERE v.partition_id = acked.partition_id
), settled AS (  -- the batch's outcomes are persisted: its crash records are done with
    DELETE FROM cleanup_worker_deliveries d USING acked
    WHERE d.partition_id = acked.partition_id AND d.seq <= %(last_seq)s
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
      AND NOT EXISTS (  -- one dead letter per message, however often its outcome is recorded
          SELECT 1 FROM modkit_outbox_dead_letters d
          WHERE d.partition_id = o.partition_id AND d.seq = o.seq
      )
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
), crashes_folded AS (  -- counted into deliveries (parked rows) or done with (the others)
    DELETE FROM cleanup_worker_deliveries d USING o
    WHERE d.partition_id = o.partition_id AND d.seq = o.seq
)
SELECT (SELECT count(*) FROM new_dead) + (SELECT count(*) FROM dead_again) AS dead_lettered,
       (SELECT count(*) FROM parked) AS parked,
       (SELECT count(*) FROM resolved) AS resolved;

-- name: lease_due_retries
-- Lease up to n parked messages whose time has come, oldest due first. locked_by is a fencing
-- token per row and acquisition, as for partitions (lease_partitions). A delivery is counted
-- only when the row's previous lease ended with an outcome: after an expired lease (a crash, a
-- lost lease) the number is reused and the row is "suspect", handled alone (isolation.py).
-- A message parked only for its tenant's fair turn (reason 'deferred') was not handled: no
-- delivery either.
WITH due AS (
    SELECT r.id, r.locked_by IS NOT NULL AS suspect FROM cleanup_worker_retries r
    JOIN modkit_outbox_partitions p ON p.id = r.partition_id
    WHERE p.queue = ANY(%(queues)s)
      AND r.not_before <= now()
      AND (r.locked_by IS NULL OR r.locked_until < now())
    ORDER BY r.not_before
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE cleanup_worker_retries r
SET locked_by = %(worker_id)s || '/' || gen_random_uuid(),
    locked_until = now() + make_interval(secs => %(lease_seconds)s),
    deliveries = r.deliveries + CASE WHEN due.suspect OR r.reason = 'deferred' THEN 0 ELSE 1 END,
    updated_at = now()
FROM due, modkit_outbox_partitions p
WHERE r.id = due.id AND p.id = r.partition_id
RETURNING r.id, r.locked_by, due.suspect, p.queue, p.partition, r.partition_id, r.seq,
          r.payload, r.payload_type, r.created_at, r.deliveries, r.dead_letter_id;

-- name: next_retry_due
-- Seconds until the earliest parked message of these queues is due (negative: overdue; no
-- row: none parked), found by the not_before index as lease_due_retries finds them. An idle
-- retrier sleeps until then, not a whole poll interval: a message parked for its tenant's fair
-- turn comes back at that turn, so the route's budget is not left idle.
SELECT extract(epoch FROM r.not_before - now())::float8
FROM cleanup_worker_retries r
JOIN modkit_outbox_partitions p ON p.id = r.partition_id
WHERE p.queue = ANY(%(queues)s)
  AND (r.locked_by IS NULL OR r.locked_until < now())
ORDER BY r.not_before
LIMIT 1;

-- name: extend_retry_leases
-- Heartbeat for leased retry rows; returns the ones these acquisitions still hold.
UPDATE cleanup_worker_retries r
SET locked_until = now() + make_interval(secs => %(lease_seconds)s)
FROM unnest(%(ids)s::bigint[], %(tokens)s::text[]) AS mine(id, token)
WHERE r.id = mine.id AND r.locked_by = mine.token
RETURNING r.id;

-- name: lock_own_retries
-- The retrier's ack guard: the leased rows these acquisitions still hold, locked for the ack.
SELECT r.id FROM cleanup_worker_retries r
JOIN unnest(%(ids)s::bigint[], %(tokens)s::text[]) AS mine(id, token)
  ON r.id = mine.id AND r.locked_by = mine.token
FOR UPDATE OF r;

-- name: delivery_started
-- Handling of a suspect message starts (committed before the handler runs); returns how often
-- it started before without finishing: the times handling it alone killed the process.
INSERT INTO cleanup_worker_deliveries AS d (partition_id, seq, started)
VALUES (%(partition_id)s, %(seq)s, 1)
ON CONFLICT (partition_id, seq) DO UPDATE
SET started = d.started + 1, updated_at = now()
RETURNING d.started - 1 - d.finished AS crashes;

-- name: delivery_finished
-- Handling of a suspect message returned (whatever the outcome): it did not kill the process.
UPDATE cleanup_worker_deliveries
SET finished = finished + 1, updated_at = now()
WHERE partition_id = %(partition_id)s AND seq = %(seq)s;

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
