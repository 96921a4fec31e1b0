-- Opportunities (slot resources, key '', and their slots) at their latest
-- change number: the opportunity feeds page this, reading capacity live.
CREATE TABLE opportunity_feed (
  resource_id TEXT NOT NULL,
  bkey        TEXT NOT NULL,
  change_no   BIGINT NOT NULL,
  modified    TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (resource_id, bkey)
);
CREATE INDEX opportunity_feed_change ON opportunity_feed (change_no);

-- What exists already is published once, numbered after every change so far.
INSERT INTO opportunity_feed (resource_id, bkey, change_no, modified)
SELECT resource_id, bkey, (SELECT value FROM counters WHERE name = 'change_no') + ROW_NUMBER() OVER (ORDER BY resource_id, bkey), created_at
FROM (
  SELECT id AS resource_id, '' AS bkey, created_at FROM resources WHERE kind = 'slot'
  UNION ALL
  SELECT s.resource_id, s.id, r.created_at FROM slots s JOIN resources r ON r.id = s.resource_id
) AS existing;
UPDATE counters SET value = (SELECT MAX(change_no) FROM opportunity_feed)
WHERE name = 'change_no' AND value < (SELECT COALESCE(MAX(change_no), 0) FROM opportunity_feed);
