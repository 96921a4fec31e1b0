-- The outbox stays append-only. The sequencer used to UPDATE each event
-- row to give it its change number: a second copy of every (wide) event,
-- never a HOT update (change_no is indexed), a dead tuple per event for
-- autovacuum to find in the biggest table, and a burst of that work every
-- sequencer run that the batches behind it waited for. Now a write queues
-- the new event's seq in the narrow events_pending, and the sequencer moves
-- it to the narrow event_changes.
CREATE TABLE event_changes (
  change_no BIGINT PRIMARY KEY,
  seq       BIGINT NOT NULL UNIQUE -- numbered once
);
INSERT INTO event_changes (change_no, seq) SELECT change_no, seq FROM events WHERE change_no IS NOT NULL;

CREATE TABLE events_pending (
  seq BIGINT PRIMARY KEY
);
INSERT INTO events_pending (seq) SELECT seq FROM events WHERE change_no IS NULL;

DROP INDEX events_change_no;
DROP INDEX events_unsequenced;
ALTER TABLE events DROP COLUMN change_no;
