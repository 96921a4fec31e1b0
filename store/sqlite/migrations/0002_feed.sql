-- Change numbers, assigned after commit by the sequencer (engine.Sequence),
-- so that a reader paging by change number never skips a late commit.
ALTER TABLE events ADD COLUMN change_no INTEGER;
CREATE UNIQUE INDEX events_change_no ON events (change_no) WHERE change_no IS NOT NULL;
CREATE INDEX events_unsequenced ON events (seq) WHERE change_no IS NULL;

-- The Orders feed: each order once, at its latest change.
CREATE TABLE order_feed (
  order_id  TEXT PRIMARY KEY,
  change_no INTEGER NOT NULL UNIQUE,
  modified  INTEGER NOT NULL,
  state     TEXT NOT NULL CHECK (state IN ('updated', 'deleted')),
  data      TEXT NOT NULL
);

CREATE TABLE counters (
  name  TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('change_no', 0);
