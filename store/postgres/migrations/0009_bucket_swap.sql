-- A batch that writes buckets over the state it last committed, without
-- locking and reading them first, checks in the same statement that they
-- are still as it knew them; if not, this fails the statement, and with it
-- the transaction and every statement pipelined behind it (COMMIT ends in
-- a rollback). The engine then runs the batch again the locking way.
CREATE FUNCTION allot_buckets_unchanged(swapped int, expected int) RETURNS int
LANGUAGE plpgsql AS $$
BEGIN
  IF swapped <> expected THEN
    RAISE EXCEPTION 'allot: % of % buckets changed since they were read', expected - swapped, expected
      USING ERRCODE = 'AB001';
  END IF;
  RETURN swapped;
END
$$;
