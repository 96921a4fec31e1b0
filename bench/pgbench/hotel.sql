-- The raw booking transaction of the hotel workload: three nightly
-- conditional UPDATEs in date order, the reservation INSERT and the outbox
-- INSERT, in one transaction.
\set room random(1, 1000)
\set n1 random(0, 361)
\set n2 :n1 + 1
\set n3 :n1 + 2
BEGIN;
UPDATE allot_pgbench_nights SET booked = booked + 1 WHERE room = :room AND night = :n1 AND booked + 1 <= capacity;
UPDATE allot_pgbench_nights SET booked = booked + 1 WHERE room = :room AND night = :n2 AND booked + 1 <= capacity;
UPDATE allot_pgbench_nights SET booked = booked + 1 WHERE room = :room AND night = :n3 AND booked + 1 <= capacity;
INSERT INTO allot_pgbench_reservations (room, first_night, nights) VALUES (:room, :n1, 3);
INSERT INTO allot_pgbench_outbox (payload) VALUES ('{"type":"order.created"}');
END;
