-- Allot schema, SQLite dialect. Times are Unix microseconds (UTC).
CREATE TABLE resources (
  id          TEXT PRIMARY KEY,
  name        TEXT NOT NULL,
  kind        TEXT NOT NULL,
  capacity    INTEGER NOT NULL,
  price_minor INTEGER,
  price_scale INTEGER,
  currency    TEXT,
  created_at  INTEGER NOT NULL
);

CREATE TABLE slots (
  resource_id TEXT NOT NULL REFERENCES resources (id),
  id          TEXT NOT NULL,
  starts_at   INTEGER NOT NULL,
  PRIMARY KEY (resource_id, id)
) WITHOUT ROWID;

-- The invariant held + booked <= capacity is also a constraint, so that no
-- bug above the database can ever commit an oversold bucket.
CREATE TABLE buckets (
  resource_id TEXT NOT NULL REFERENCES resources (id),
  bkey        TEXT NOT NULL,
  capacity    INTEGER NOT NULL CHECK (capacity >= 0),
  held        INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
  booked      INTEGER NOT NULL DEFAULT 0 CHECK (booked >= 0),
  CHECK (held + booked <= capacity),
  PRIMARY KEY (resource_id, bkey)
) WITHOUT ROWID;

CREATE TABLE claims (
  owner_id    TEXT NOT NULL,
  resource_id TEXT NOT NULL,
  bkey        TEXT NOT NULL,
  kind        TEXT NOT NULL CHECK (kind IN ('held', 'booked')),
  quantity    INTEGER NOT NULL CHECK (quantity > 0),
  PRIMARY KEY (owner_id, resource_id, bkey)
) WITHOUT ROWID;
CREATE INDEX claims_bucket ON claims (resource_id, bkey);

CREATE TABLE holds (
  id          TEXT PRIMARY KEY,
  status      TEXT NOT NULL,
  customer_id TEXT NOT NULL DEFAULT '',
  expires_at  INTEGER NOT NULL,
  created_at  INTEGER NOT NULL,
  order_id    TEXT NOT NULL DEFAULT '',
  lines       TEXT NOT NULL
);
CREATE INDEX holds_status_expiry ON holds (status, expires_at);

CREATE TABLE orders (
  id          TEXT PRIMARY KEY,
  status      TEXT NOT NULL,
  customer_id TEXT NOT NULL DEFAULT '',
  hold_id     TEXT NOT NULL DEFAULT '',
  lines       TEXT NOT NULL,
  total_minor INTEGER,
  total_scale INTEGER,
  currency    TEXT,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL
);
CREATE INDEX orders_customer ON orders (customer_id, id);
CREATE INDEX orders_status ON orders (status, id);

CREATE TABLE order_transitions (
  order_id    TEXT NOT NULL REFERENCES orders (id),
  seq         INTEGER NOT NULL,
  from_status TEXT NOT NULL,
  to_status   TEXT NOT NULL,
  cause       TEXT NOT NULL,
  at          INTEGER NOT NULL,
  PRIMARY KEY (order_id, seq)
) WITHOUT ROWID;

-- The transactional outbox: appended in the transaction of the change.
CREATE TABLE events (
  seq         INTEGER PRIMARY KEY AUTOINCREMENT,
  id          TEXT NOT NULL UNIQUE,
  type        TEXT NOT NULL,
  resource_id TEXT NOT NULL DEFAULT '',
  order_id    TEXT NOT NULL DEFAULT '',
  hold_id     TEXT NOT NULL DEFAULT '',
  at          INTEGER NOT NULL,
  payload     TEXT NOT NULL
);

CREATE TABLE idempotency_keys (
  key        TEXT PRIMARY KEY,
  hash       TEXT NOT NULL,
  token      TEXT NOT NULL,
  done       INTEGER NOT NULL DEFAULT 0,
  status     INTEGER NOT NULL DEFAULT 0,
  body       BLOB,
  claimed_at INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_claimed ON idempotency_keys (claimed_at);
