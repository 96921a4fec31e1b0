-- A retired opportunity stays in its feed as deleted (an RPDE tombstone).
ALTER TABLE opportunity_feed ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
