-- The database ceiling for one hot bucket: the single-row conditional
-- UPDATE a one-request-per-transaction booking service makes, in its own
-- transaction (pgbench autocommit), synchronous_commit on.
UPDATE allot_pgbench_hot SET held = held + 1 WHERE id = 1 AND held + booked + 1 <= capacity;
