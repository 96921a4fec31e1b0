#!/usr/bin/env bash
# The runs behind docs/benchmarks.md. Each --compare run measures, in the
# same run, the batch engine, the naive engine, the HTTP ceiling and (on
# PostgreSQL) pgbench. Usage: scripts/bench-all.sh [OUT_DIR] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results}; secs=${2:-10}
pg=${ALLOT_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
go build -o "$out/allot" ./cmd/allot
b() { "$out/allot" bench --out "$out" --duration "${secs}s" "$@" 2>&1 | grep -v ' t=' ; }
b --workload hot --db "$pg" --clients 64 --compare
b --workload hot --db sqlite --clients 64 --compare
b --workload hotel --db "$pg" --clients 64 --compare
b --workload hotel --db sqlite --clients 64
b --workload flash-sale --db "$pg" --clients 64 --capacity 100 --requests 1000
b --workload flash-sale --db sqlite --clients 64 --capacity 100 --requests 1000
b --workload mixed --db "$pg" --clients 32
b --workload mixed --db sqlite --clients 32
# p99 at half of the peak: pass the peaks measured above as PEAK_PG / PEAK_SQLITE.
if [ -n "${PEAK_PG:-}" ]; then b --workload hot --db "$pg" --clients 64 --rate "$((PEAK_PG / 2))"; fi
if [ -n "${PEAK_SQLITE:-}" ]; then b --workload hot --db sqlite --clients 64 --rate "$((PEAK_SQLITE / 2))"; fi
