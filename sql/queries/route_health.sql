-- Suspected provider routes (sql/schema/003_route_health.sql), one row per suspected route.

-- name: mark_route_suspected
-- A replica found a route suspected; the first report's time is kept while it stays suspected.
INSERT INTO cleanup_worker_route_health
    (backend, tenant_id, fingerprint, distinct_not_found, updated_by)
VALUES (%(backend)s, %(tenant_id)s, %(fingerprint)s, %(distinct_not_found)s, %(updated_by)s)
ON CONFLICT (backend, tenant_id) DO UPDATE
SET distinct_not_found = EXCLUDED.distinct_not_found,
    updated_by = EXCLUDED.updated_by,
    suspected_since = CASE
        WHEN cleanup_worker_route_health.fingerprint = EXCLUDED.fingerprint
        THEN cleanup_worker_route_health.suspected_since ELSE now() END,
    fingerprint = EXCLUDED.fingerprint;

-- name: clear_route_suspicion
-- A delete on the route succeeded: it is no longer suspected.
DELETE FROM cleanup_worker_route_health
WHERE backend = %(backend)s AND tenant_id = %(tenant_id)s;

-- name: suspected_routes
-- Every suspected route, oldest first (status, check-config, and a starting worker).
SELECT backend, tenant_id, fingerprint, distinct_not_found,
       extract(epoch FROM now() - suspected_since)::float8 AS suspected_for_seconds,
       updated_by
FROM cleanup_worker_route_health
ORDER BY suspected_since, backend, tenant_id;
