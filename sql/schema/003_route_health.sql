-- Provider routes suspected of a wrong key, project or organization (SPEC §13).
-- A route (a backend label, or one tenant's override of it) that answered the API's own
-- not-found for more than providers.route_suspicion.not_found_threshold distinct objects in a
-- row without one success is suspected: its 404s stop counting as "already deleted". The
-- worker keeps the streak in memory; this table records the transitions so that `status` and
-- `check-config` (other processes) can show them, and so a restarted worker starts suspected.
-- tenant_id is '' for a backend's shared route (a primary key cannot hold NULL).
-- fingerprint identifies the route's configuration (URL, api-version, key source,
-- organization, project; never a key): a changed configuration is a new route, not suspected.
CREATE TABLE IF NOT EXISTS cleanup_worker_route_health (
    backend            VARCHAR(32) NOT NULL,
    tenant_id          VARCHAR(36) NOT NULL DEFAULT '',
    fingerprint        VARCHAR(64) NOT NULL,
    distinct_not_found INT NOT NULL CHECK (distinct_not_found >= 0),
    suspected_since    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by         VARCHAR(1024),
    PRIMARY KEY (backend, tenant_id)
);
