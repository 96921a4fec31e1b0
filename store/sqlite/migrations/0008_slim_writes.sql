-- Fewer b-trees written per hold. Every hold writes a holds row and an
-- event; each b-tree a batch touches costs SQLite at least one more WAL
-- frame (two writes and a checksum of a page) and its own insert work.
--
-- holds: keyed by id itself (WITHOUT ROWID), not by a rowid plus a separate
-- unique index on id that every insert also wrote.
CREATE TABLE holds_new (
  id          TEXT PRIMARY KEY,
  status      TEXT NOT NULL,
  customer_id TEXT NOT NULL DEFAULT '',
  expires_at  INTEGER NOT NULL,
  created_at  INTEGER NOT NULL,
  order_id    TEXT NOT NULL DEFAULT '',
  lines       TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO holds_new (id, status, customer_id, expires_at, created_at, order_id, lines)
  SELECT id, status, customer_id, expires_at, created_at, order_id, lines FROM holds;
DROP TABLE holds;
ALTER TABLE holds_new RENAME TO holds;
CREATE INDEX holds_status_expiry ON holds (status, expires_at);

-- events: no unique index on id (the engine makes ids of a millisecond
-- clock and 64 random bits, and nothing looks an event up by id), and no
-- AUTOINCREMENT, which only matters
-- when the newest row is deleted (the outbox never deletes) and cost a
-- write of sqlite_sequence per batch. seq stays max(seq) + 1, in commit
-- order: SQLite has one writer.
CREATE TABLE events_new (
  seq         INTEGER PRIMARY KEY,
  id          TEXT NOT NULL,
  type        TEXT NOT NULL,
  resource_id TEXT NOT NULL DEFAULT '',
  order_id    TEXT NOT NULL DEFAULT '',
  hold_id     TEXT NOT NULL DEFAULT '',
  at          INTEGER NOT NULL,
  payload     TEXT NOT NULL,
  change_no   INTEGER
);
INSERT INTO events_new (seq, id, type, resource_id, order_id, hold_id, at, payload, change_no)
  SELECT seq, id, type, resource_id, order_id, hold_id, at, payload, change_no FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE UNIQUE INDEX events_change_no ON events (change_no) WHERE change_no IS NOT NULL;
CREATE INDEX events_unsequenced ON events (seq) WHERE change_no IS NULL;
DELETE FROM sqlite_sequence WHERE name = 'events';
