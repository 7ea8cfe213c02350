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
