-- Statements of the readiness probe.

-- name: transaction_read_only
-- 'on' on a standby or a node made read-only (default_transaction_read_only): writes would fail.
SELECT current_setting('transaction_read_only')
