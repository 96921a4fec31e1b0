-- Tables for the pgbench ceilings; recreated for every run.
DROP TABLE IF EXISTS allot_pgbench_hot, allot_pgbench_nights, allot_pgbench_reservations, allot_pgbench_outbox;
CREATE TABLE allot_pgbench_hot (id int PRIMARY KEY, capacity int NOT NULL, held int NOT NULL DEFAULT 0, booked int NOT NULL DEFAULT 0) WITH (fillfactor = 50);
INSERT INTO allot_pgbench_hot (id, capacity) VALUES (1, 1000000000);
CREATE TABLE allot_pgbench_nights (room int, night int, capacity int NOT NULL, booked int NOT NULL DEFAULT 0, PRIMARY KEY (room, night)) WITH (fillfactor = 50);
INSERT INTO allot_pgbench_nights (room, night, capacity) SELECT r, n, 20 FROM generate_series(1, 1000) r, generate_series(0, 364) n;
CREATE TABLE allot_pgbench_reservations (id bigserial PRIMARY KEY, room int, first_night int, nights int, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE allot_pgbench_outbox (seq bigserial PRIMARY KEY, payload text NOT NULL);
