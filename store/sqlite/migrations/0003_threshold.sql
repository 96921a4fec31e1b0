-- A resource may declare an availability threshold (seed 000's price cache).
ALTER TABLE resources ADD COLUMN threshold INTEGER;
