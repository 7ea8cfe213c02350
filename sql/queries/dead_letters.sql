-- Dead-letter operator tooling (SPEC §4.6): list, replay (re-enqueue), discard.
-- Filters are optional: a NULL parameter matches everything.

-- name: list_dead_letters
-- Dead letters matching the filters, newest first.
SELECT d.id, p.queue, p.partition, d.seq, d.payload, d.payload_type, d.created_at,
       d.failed_at, d.last_error, d.attempts, d.status, d.completed_at, d.deadline
FROM modkit_outbox_dead_letters d
JOIN modkit_outbox_partitions p ON p.id = d.partition_id
WHERE (%(queue)s::text IS NULL OR p.queue = %(queue)s::text)
  AND (%(status)s::text IS NULL OR d.status = %(status)s::text)
  AND (%(ids)s::bigint[] IS NULL OR d.id = ANY(%(ids)s::bigint[]))
ORDER BY d.failed_at DESC, d.id DESC
LIMIT %(limit)s;

-- name: claim_dead_letters_for_replay
-- Claim pending dead letters (and orphaned replays past their deadline) for re-enqueue.
WITH claimable AS (
    SELECT d.id FROM modkit_outbox_dead_letters d
    JOIN modkit_outbox_partitions p ON p.id = d.partition_id
    WHERE (d.status = 'pending' OR (d.status = 'reprocessing' AND d.deadline < now()))
      AND (%(queue)s::text IS NULL OR p.queue = %(queue)s::text)
      AND (%(ids)s::bigint[] IS NULL OR d.id = ANY(%(ids)s::bigint[]))
    ORDER BY d.deadline NULLS FIRST, d.id
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE modkit_outbox_dead_letters d
SET status = 'reprocessing', deadline = now() + make_interval(secs => %(timeout_seconds)s)
FROM claimable
WHERE d.id = claimable.id
RETURNING d.id;

-- name: reenqueue_dead_letter
-- Put one claimed dead letter's payload back on its partition, linked for resolution.
WITH d AS (
    SELECT id, partition_id, payload, payload_type
    FROM modkit_outbox_dead_letters WHERE id = %(id)s
), body AS (
    INSERT INTO modkit_outbox_body (payload, payload_type)
    SELECT payload, payload_type FROM d
    RETURNING id
), incoming AS (
    INSERT INTO modkit_outbox_incoming (partition_id, body_id)
    SELECT d.partition_id, body.id FROM d, body
), link AS (
    INSERT INTO cleanup_worker_replays (body_id, dead_letter_id)
    SELECT body.id, d.id FROM d, body
)
SELECT id AS body_id FROM body;

-- name: discard_dead_letters
-- Give up on pending dead letters matching the filters.
UPDATE modkit_outbox_dead_letters d
SET status = 'discarded', completed_at = now()
FROM modkit_outbox_partitions p
WHERE p.id = d.partition_id AND d.status = 'pending'
  AND (%(queue)s::text IS NULL OR p.queue = %(queue)s::text)
  AND (%(ids)s::bigint[] IS NULL OR d.id = ANY(%(ids)s::bigint[]))
RETURNING d.id;
