-- The outbox stays append-only. The sequencer used to UPDATE each event
-- row to give it its change number: a second copy of every (wide) event,
-- never a HOT update (change_no is indexed), a dead tuple per event for
-- autovacuum to find in the biggest table, and a burst of that work every
-- sequencer run that the batches behind it waited for. Now each new event's
-- seq waits in the narrow events_pending, and the sequencer moves it to the
-- narrow event_changes.

-- No event may be written, numbered or read while the numbers move: nodes
-- still running the previous version wait here, and the copies below see
-- one state of the table. ACCESS EXCLUSIVE from the start, as the DROPs
-- below need it: a weaker lock upgraded later deadlocks with an old
-- sequencer that reads, then updates. Give up rather than queue every
-- event write behind a long reader.
SET LOCAL lock_timeout = '10s';
LOCK TABLE events IN ACCESS EXCLUSIVE MODE;

CREATE TABLE event_changes (
  change_no BIGINT PRIMARY KEY,
  seq       BIGINT NOT NULL UNIQUE -- numbered once
);
INSERT INTO event_changes (change_no, seq) SELECT change_no, seq FROM events WHERE change_no IS NOT NULL;

CREATE TABLE events_pending (
  seq BIGINT PRIMARY KEY
);
INSERT INTO events_pending (seq) SELECT seq FROM events WHERE change_no IS NULL;

-- A trigger, not the inserting statement, queues new events: an event
-- written by any version of Allot (a node not yet upgraded, during a
-- rolling upgrade) is numbered.
CREATE FUNCTION events_pending_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO events_pending (seq) SELECT seq FROM new_events;
  RETURN NULL;
END
$$;
-- events_pending is the one in this schema, whatever search_path the
-- inserting session has.
ALTER FUNCTION events_pending_add() SET search_path FROM CURRENT;
CREATE TRIGGER events_pending_add AFTER INSERT ON events
  REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION events_pending_add();

DROP INDEX events_change_no;
DROP INDEX events_unsequenced;
ALTER TABLE events DROP COLUMN change_no;

ANALYZE event_changes;
ANALYZE events_pending;
