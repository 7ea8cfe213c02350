-- Backlog and debt, for `cleanup-worker status`, the backlog gauges and the KEDA scaler.
-- Each is index-backed or bounded by the (small) number of partitions.

-- name: partition_backlog
-- Per partition: outbox messages not yet processed, the oldest one's age, and the lease (who
-- holds it and when it expires).
SELECT p.queue, p.partition,
       (SELECT count(*) FROM modkit_outbox_incoming i WHERE i.partition_id = p.id)
       + (SELECT count(*) FROM modkit_outbox_outgoing o
          WHERE o.partition_id = p.id AND o.seq > pr.processed_seq) AS messages,
       extract(epoch FROM now() - least(
           (SELECT b.created_at FROM modkit_outbox_incoming i
            JOIN modkit_outbox_body b ON b.id = i.body_id
            WHERE i.partition_id = p.id ORDER BY i.id LIMIT 1),
           (SELECT b.created_at FROM modkit_outbox_outgoing o
            JOIN modkit_outbox_body b ON b.id = o.body_id
            WHERE o.partition_id = p.id AND o.seq > pr.processed_seq ORDER BY o.seq LIMIT 1)
       ))::float8 AS oldest_age_seconds,
       pr.processed_seq, pr.attempts, pr.last_error,
       CASE WHEN pr.locked_until > now() THEN pr.locked_by END AS leased_by,
       CASE WHEN pr.locked_until > now()
            THEN extract(epoch FROM pr.locked_until - now())::float8 END
           AS lease_expires_in_seconds
FROM modkit_outbox_partitions p
JOIN modkit_outbox_processor pr ON pr.partition_id = p.id
WHERE p.queue = ANY(%(queues)s)
ORDER BY p.queue, p.partition;

-- name: retry_backlog
-- Parked messages per queue: due now, waiting, the oldest first failure, and when the next
-- waiting one comes due (NULL when none waits: due ones are "due", never a negative delay).
SELECT p.queue,
       count(*) FILTER (WHERE r.not_before <= now()) AS due,
       count(*) FILTER (WHERE r.not_before > now()) AS parked,
       extract(epoch FROM now() - min(r.created_at))::float8 AS oldest_age_seconds,
       extract(epoch FROM min(r.not_before) FILTER (WHERE r.not_before > now()) - now())::float8
           AS next_due_in_seconds
FROM cleanup_worker_retries r
JOIN modkit_outbox_partitions p ON p.id = r.partition_id
WHERE p.queue = ANY(%(queues)s)
GROUP BY p.queue;

-- name: dead_letter_backlog
-- Dead letters per queue and status, with the oldest failure of each group.
SELECT p.queue, d.status, count(*) AS count,
       extract(epoch FROM now() - min(d.failed_at))::float8 AS oldest_age_seconds
FROM modkit_outbox_dead_letters d
JOIN modkit_outbox_partitions p ON p.id = d.partition_id
WHERE p.queue = ANY(%(queues)s)
GROUP BY p.queue, d.status;

-- name: attachment_debt
-- Attachments whose cleanup is pending or failed (the gauges; 'done' is history).
SELECT cleanup_status, count(*) AS count FROM attachments
WHERE cleanup_status IN ('pending', 'failed')
GROUP BY cleanup_status;

-- name: attachments_row_estimate
-- The planner's row count of attachments (pg_class.reltuples: no scan; -1 before the first
-- ANALYZE). Above a threshold `status` estimates the history instead of counting it.
SELECT reltuples::bigint FROM pg_class WHERE oid = 'attachments'::regclass;

-- name: attachment_history_counts
-- The history, counted exactly (a scan of the table: only on tables below the threshold):
-- done rows, and soft-deleted rows whose cleanup never started ('none').
SELECT coalesce(cleanup_status, 'none') AS cleanup_status, count(*) AS count
FROM attachments
WHERE cleanup_status = 'done' OR (cleanup_status IS NULL AND deleted_at IS NOT NULL)
GROUP BY 1;

-- name: attachments_done
-- Estimated, not run, on a large table: `status` reads the planner's row estimate (EXPLAIN).
SELECT 1 FROM attachments WHERE cleanup_status = 'done';

-- name: tenant_backlog
-- The tenants with the most cleanup left: attachment rows pending / failed and vector stores of
-- deleted chats, per tenant (for `status`, not the hot loop).
WITH files AS (
    SELECT tenant_id,
           count(*) FILTER (WHERE cleanup_status = 'pending') AS pending,
           count(*) FILTER (WHERE cleanup_status = 'failed') AS failed
    FROM attachments WHERE cleanup_status IN ('pending', 'failed')
    GROUP BY tenant_id
), stores AS (
    SELECT v.tenant_id, count(*) AS left_
    FROM chat_vector_stores v JOIN chats c ON c.id = v.chat_id
    WHERE c.deleted_at IS NOT NULL
    GROUP BY v.tenant_id
)
SELECT tenant_id, coalesce(f.pending, 0) AS attachments_pending,
       coalesce(f.failed, 0) AS attachments_failed, coalesce(s.left_, 0) AS vector_stores_left
FROM files f FULL JOIN stores s USING (tenant_id)
ORDER BY coalesce(f.failed, 0) DESC, coalesce(f.pending, 0) + coalesce(s.left_, 0) DESC, tenant_id
LIMIT %(limit)s;

-- name: outstanding_vector_stores
-- Vector-store rows of soft-deleted chats: cleanup of those chats is not finished.
SELECT count(*) AS count FROM chat_vector_stores v
JOIN chats c ON c.id = v.chat_id
WHERE c.deleted_at IS NOT NULL;

-- name: attachments_failed_since
-- Attachments that reached terminal failure since a point in time (a drain pass's own debt).
SELECT count(*) AS count FROM attachments
WHERE cleanup_status = 'failed' AND cleanup_updated_at >= %(since)s;

-- name: database_now
-- The database's clock (drain measures "since" on the server, not on this host).
SELECT now();
