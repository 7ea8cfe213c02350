-- Bookkeeping for `cleanup-worker migrate`.

-- name: create_migrations_table
-- What migrate applied, so /readyz can tell whether this database is ready for this version.
CREATE TABLE IF NOT EXISTS cleanup_worker_migrations (
    name       TEXT PRIMARY KEY,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- name: applied_migrations
-- Names and checksums of the files applied so far.
SELECT name, checksum FROM cleanup_worker_migrations;

-- name: record_migration
-- Remember a file as applied (again, when its content changed).
INSERT INTO cleanup_worker_migrations (name, checksum) VALUES (%(name)s, %(checksum)s)
ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now();

-- name: migrations_table_exists
-- Whether migrate ever ran here (readiness must not fail with an SQL error before it has).
SELECT to_regclass('cleanup_worker_migrations') IS NOT NULL AS present;

-- name: lock_migrations
-- Serialise migrate across replicas starting at once (released when the transaction ends).
SELECT pg_advisory_xact_lock(7526124712340113011);

-- name: app_index_states
-- The indexes of sql/app_indexes as the catalog has them, for migrate, check-config and status:
-- whether the table and the index exist, whether the index is valid (an interrupted
-- CONCURRENTLY build leaves it INVALID), and whether an index build on its table is running in
-- another session (another replica's migrate, a DBA): two CONCURRENTLY builds on one table
-- deadlock, so migrate waits for it. Other roles' progress rows come without their relation;
-- such a row counts as a build on this table. may_build: only the table's owner (or a member
-- of its role, or a superuser) may index it. Catalog reads only: fast on any table size.
SELECT n.name,
       to_regclass(n.tbl) IS NOT NULL AS table_present,
       coalesce(pg_has_role(t.relowner, 'USAGE'), false) AS may_build,
       i.indexrelid IS NOT NULL AS present,
       coalesce(i.indisvalid AND i.indisready, false) AS valid,
       EXISTS (
           SELECT 1 FROM pg_stat_progress_create_index p
           JOIN pg_database d ON d.oid = p.datid AND d.datname = current_database()
           WHERE p.pid <> pg_backend_pid()
             AND (p.relid IS NULL OR p.relid = to_regclass(n.tbl))
       ) AS building
FROM unnest(%(names)s::text[], %(tables)s::text[]) WITH ORDINALITY AS n(name, tbl, ord)
LEFT JOIN pg_class t ON t.oid = to_regclass(n.tbl)
LEFT JOIN pg_index i ON i.indexrelid = to_regclass(n.name)
ORDER BY n.ord;
