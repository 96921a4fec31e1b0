-- The booking workflow: customers (the notifier writes to their email) and
-- each order's choice of payment provider (JSON of allot.OrderPayment, or '').
CREATE TABLE customers (
  id         TEXT PRIMARY KEY,
  name       TEXT NOT NULL DEFAULT '',
  email      TEXT NOT NULL,
  created_at INTEGER NOT NULL
);

ALTER TABLE orders ADD COLUMN payment TEXT NOT NULL DEFAULT '';
