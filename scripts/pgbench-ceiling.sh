#!/usr/bin/env bash
# The database ceilings that docs/benchmarks.md compares Allot with, by hand:
#   scripts/pgbench-ceiling.sh hot|hotel CLIENTS SECONDS [DATABASE_URL]
# `allot bench --compare --db postgres://...` runs the same scripts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
script=${1:?hot or hotel}; clients=${2:-64}; seconds=${3:-10}
db=${4:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
psql -q "$db" -f bench/pgbench/setup.sql
trap 'psql -q "$db" -c "DROP TABLE IF EXISTS allot_pgbench_hot, allot_pgbench_nights, allot_pgbench_reservations, allot_pgbench_outbox"' EXIT
pgbench -n -c "$clients" -j 2 -T "$seconds" -f "bench/pgbench/$script.sql" "$db"
