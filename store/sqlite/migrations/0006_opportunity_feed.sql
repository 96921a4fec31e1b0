-- Opportunities (slot resources, key '', and their slots) at their latest
-- change number: the opportunity feeds page this, reading capacity live.
CREATE TABLE opportunity_feed (
  resource_id TEXT NOT NULL,
  bkey        TEXT NOT NULL,
  change_no   BIGINT NOT NULL,
  modified    INTEGER NOT NULL,
  PRIMARY KEY (resource_id, bkey)
);
CREATE INDEX opportunity_feed_change ON opportunity_feed (change_no);
