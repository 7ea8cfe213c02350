-- Statements of the benchmark harness only (seeding, probes, the original model). Same format
-- as sql/queries: "-- name: <name>", one comment line, the statement.

-- name: seed_live_chats
-- One live chat per tenant, owning the attachments the attachment benchmark deletes.
INSERT INTO chats (id, tenant_id, user_id, model, title, created_at, updated_at)
SELECT gen_random_uuid(), t, gen_random_uuid(), 'gpt-4o', 'bench', now(), now()
FROM unnest(%(tenants)s::uuid[]) AS t;

-- name: seed_attachment_messages
-- n soft-deleted attachments spread over the tenants' chats, each with its attachment_deleted
-- message in incoming, partitioned by tenant (uuid as 128-bit integer mod partitions: its last
-- byte mod partitions for a power of two). Without files: no provider file (a DB-only cleanup).
WITH planned AS (
    SELECT c.tenant_id, c.id AS chat_id, gen_random_uuid() AS attachment_id,
           CASE WHEN %(with_files)s
                THEN 'file-' || replace(gen_random_uuid()::text, '-', '') END AS file_id, g
    FROM generate_series(1, %(n)s) AS g
    JOIN (SELECT id, tenant_id, row_number() OVER (ORDER BY id) - 1 AS k FROM chats
          WHERE tenant_id = ANY(%(tenants)s::uuid[]) AND deleted_at IS NULL) c
      ON c.k = g %% cardinality(%(tenants)s::uuid[])
), attachments_made AS (
    INSERT INTO attachments (id, tenant_id, chat_id, uploaded_by_user_id, filename, content_type,
                             size_bytes, storage_backend, provider_file_id, status,
                             attachment_kind, created_at, deleted_at)
    SELECT attachment_id, tenant_id, chat_id, gen_random_uuid(), 'f.pdf', 'application/pdf', 1,
           'openai', file_id, 'ready', 'document', now(), now()
    FROM planned
), bodies AS (
    INSERT INTO modkit_outbox_body (payload, payload_type)
    SELECT convert_to(json_build_object(
               'event_type', 'attachment_deleted', 'tenant_id', tenant_id, 'chat_id', chat_id,
               'attachment_id', attachment_id, 'provider_file_id', file_id,
               'vector_store_id', NULL, 'storage_backend', 'openai',
               'attachment_kind', 'document', 'deleted_at', now())::text, 'UTF8'),
           'application/json'
    FROM planned ORDER BY g
    RETURNING id, payload
)
INSERT INTO modkit_outbox_incoming (partition_id, body_id)
SELECT p.id, b.id FROM bodies b
JOIN modkit_outbox_partitions p
  ON p.queue = %(queue)s
 AND p.partition = get_byte(uuid_send((convert_from(b.payload, 'UTF8')::json ->> 'tenant_id')::uuid),
                            15) %% %(partitions)s
ORDER BY b.id;

-- name: seed_chat_messages
-- n soft-deleted chats, each with k pending attachments and a vector store, and their
-- chat_soft_delete messages in incoming, partitioned by chat.
WITH planned AS (
    SELECT gen_random_uuid() AS chat_id, gen_random_uuid() AS tenant_id, g
    FROM generate_series(1, %(n)s) AS g
), chats_made AS (
    INSERT INTO chats (id, tenant_id, user_id, model, title, created_at, updated_at, deleted_at)
    SELECT chat_id, tenant_id, gen_random_uuid(), 'gpt-4o', 'bench', now(), now(), now()
    FROM planned
    RETURNING id
), attachments_made AS (
    INSERT INTO attachments (id, tenant_id, chat_id, uploaded_by_user_id, filename, content_type,
                             size_bytes, storage_backend, provider_file_id, status,
                             attachment_kind, cleanup_status, created_at)
    SELECT gen_random_uuid(), p.tenant_id, p.chat_id, gen_random_uuid(), 'f.pdf',
           'application/pdf', 1, 'openai', 'file-' || replace(gen_random_uuid()::text, '-', ''),
           'ready', 'document', 'pending', now()
    FROM planned p, generate_series(1, %(per_chat)s)
    WHERE EXISTS (SELECT 1 FROM chats_made c WHERE c.id = p.chat_id)
), stores_made AS (
    INSERT INTO chat_vector_stores (id, tenant_id, chat_id, vector_store_id, provider,
                                    file_count, created_at)
    SELECT gen_random_uuid(), tenant_id, chat_id, 'vs_' || replace(gen_random_uuid()::text, '-', ''),
           'openai', %(per_chat)s, now()
    FROM planned
    WHERE EXISTS (SELECT 1 FROM chats_made c WHERE c.id = planned.chat_id)
), bodies AS (
    INSERT INTO modkit_outbox_body (payload, payload_type)
    SELECT convert_to(json_build_object(
               'reason', 'chat_soft_delete', 'tenant_id', tenant_id, 'chat_id', chat_id,
               'system_request_id', gen_random_uuid(), 'chat_deleted_at', now())::text, 'UTF8'),
           'application/json'
    FROM planned ORDER BY g
    RETURNING id, payload
)
INSERT INTO modkit_outbox_incoming (partition_id, body_id)
SELECT p.id, b.id FROM bodies b
JOIN modkit_outbox_partitions p
  ON p.queue = %(queue)s
 AND p.partition = get_byte(uuid_send((convert_from(b.payload, 'UTF8')::json ->> 'chat_id')::uuid),
                            15) %% %(partitions)s
ORDER BY b.id;

-- name: seed_noop_messages
-- n small messages spread round-robin over a queue's partitions (no chat-service rows).
WITH bodies AS (
    INSERT INTO modkit_outbox_body (payload, payload_type)
    SELECT convert_to('{"bench": ' || g || '}', 'UTF8'), 'application/json'
    FROM generate_series(1, %(n)s) AS g
    ORDER BY g
    RETURNING id
)
INSERT INTO modkit_outbox_incoming (partition_id, body_id)
SELECT p.id, b.id FROM bodies b
JOIN modkit_outbox_partitions p ON p.queue = %(queue)s AND p.partition = b.id %% %(partitions)s
ORDER BY b.id;

-- name: processed_total
-- Messages acked so far over every partition (the cursor sum): the progress probe.
SELECT coalesce(sum(processed_seq), 0)::bigint FROM modkit_outbox_processor;

-- name: attachments_done
-- Attachments whose cleanup finished (the rate-limited benchmark's progress).
SELECT count(*) FROM attachments WHERE cleanup_status = 'done';

-- name: tenant_attachments_done
-- One tenant's attachment cleanups finished (the fairness benchmark's progress per tenant).
SELECT count(*) FROM attachments WHERE cleanup_status = 'done' AND tenant_id = %(tenant)s;

-- name: chats_done
-- Deleted chats whose cleanup finished (their vector-store row, the completion marker, is gone).
SELECT count(*) FROM chats c
WHERE c.deleted_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM chat_vector_stores v WHERE v.chat_id = c.id);

-- name: outcome_totals
-- What a finished run left behind: attachments by state, dead letters, parked retries.
SELECT (SELECT count(*) FROM attachments WHERE cleanup_status = 'done') AS done,
       (SELECT count(*) FROM attachments WHERE cleanup_status IS DISTINCT FROM 'done') AS not_done,
       (SELECT count(*) FROM chat_vector_stores) AS vector_stores_left,
       (SELECT count(*) FROM modkit_outbox_dead_letters) AS dead_letters,
       (SELECT count(*) FROM cleanup_worker_retries) AS retries;

-- name: database_transactions
-- Committed + rolled back transactions of one database so far (statements, in autocommit).
SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database();

-- name: pgqueuer_remaining
-- PGQueuer jobs not finished yet.
SELECT count(*) FROM pgqueuer;

-- name: original_lease
-- The original's lease of one partition (upstream §1.6): free or expired, attempts + 1.
UPDATE modkit_outbox_processor
SET locked_by = %(worker_id)s,
    locked_until = now() + make_interval(secs => %(lease_seconds)s),
    attempts = attempts + 1
WHERE partition_id = %(partition_id)s AND (locked_by IS NULL OR locked_until < now())
RETURNING processed_seq, attempts;

-- name: original_release
-- The original's release of an empty or fully retried partition: no progress, attempts reset.
UPDATE modkit_outbox_processor
SET attempts = 0, locked_by = NULL, locked_until = NULL
WHERE partition_id = %(partition_id)s AND locked_by = %(worker_id)s;

-- name: fill_chats
-- The live chats of the chat-service filler (TABLES): ids derived from a number, so the
-- filler's attachments can name them without a join.
INSERT INTO chats (id, tenant_id, user_id, model, title, created_at, updated_at)
SELECT md5('fill-chat-' || g)::uuid, md5('fill-tenant-' || g %% 100)::uuid,
       md5('fill-user-' || g)::uuid, 'gpt-4o', 'filler', now(), now()
FROM generate_series(0, %(chats)s - 1) AS g;

-- name: fill_attachments
-- n attachments, 10 per filler chat, as a chat service's table holds them after a while: most
-- live and never cleaned; every tenth soft-deleted one by one and cleaned long ago ('done');
-- every thousandth of those terminally failed (a little debt for the gauges to count).
INSERT INTO attachments (id, tenant_id, chat_id, uploaded_by_user_id, filename, content_type,
                         size_bytes, storage_backend, provider_file_id, status, attachment_kind,
                         cleanup_status, created_at, deleted_at)
SELECT md5('fill-attachment-' || g)::uuid, md5('fill-tenant-' || (g / 10) %% 100)::uuid,
       md5('fill-chat-' || g / 10)::uuid, md5('fill-user-' || g / 10)::uuid, 'f.pdf',
       'application/pdf', 1, 'openai', 'file-fill-' || g, 'ready', 'document',
       CASE WHEN g %% 10000 = 0 THEN 'failed' WHEN g %% 10 = 0 THEN 'done' END,
       now(), CASE WHEN g %% 10 = 0 THEN now() END
FROM generate_series(0, %(n)s - 1) AS g;

-- name: vector_stores_left
-- Vector-store rows left (TABLES: only its seeded chats have one; a finished chat has none).
SELECT count(*) FROM chat_vector_stores;
