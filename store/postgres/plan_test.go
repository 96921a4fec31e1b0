package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/allot/allot"
	"github.com/allot/allot/store/postgres/pgtest"
)

// The sequencer and the feeds read a few events by seq, and a batch locks a
// few buckets by key. Planned as a join, PostgreSQL may choose a merge or
// hash join that reads the events table from its first row on every call:
// work that grows with every event ever written (a hot-bucket benchmark
// showed 34,000 rows read per sequencer run), or every bucket. The queries
// must leave it a per-row lookup only, whatever the planner's statistics
// say: with nested loops priced out, they still plan as one.
func TestLookupsPlanAsNestedLoops(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	s, err := Open(ctx, url, Options{Schema: pgtest.Schema(t, url)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Enough events that a join over all of them would look cheap to a
	// planner told nested loops cost a fortune.
	if _, err := s.pool.Exec(ctx, `INSERT INTO events (id, type, at, payload)
		SELECT 'evt_' || i, 'hold.created', now(), '{}' FROM generate_series(1, 2000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO event_changes (change_no, seq) SELECT seq, seq FROM events WHERE seq <= 1000`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO resources (id, name, kind, capacity, created_at) VALUES ('r1', 'r1', 'stock', 1, now())`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO buckets (resource_id, bkey, capacity)
		SELECT 'r1', to_char(date '2027-01-01' + i, 'YYYY-MM-DD'), 1 FROM generate_series(0, 1999) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `ANALYZE events; ANALYZE event_changes; ANALYZE events_pending; ANALYZE buckets`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		query string
		args  []any
	}{
		{"unsequenced", unsequencedEventsSQL, []any{1000}},
		{"after change", eventsAfterChangeSQL, []any{0, 1000}},
		{"lock buckets", lockBucketsSQL, []any{[]string{"r1", "r2"}, []string{"2027-01-01", "2027-01-02"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan := explain(t, s, tc.query, tc.args...)
			if !strings.Contains(plan, "Nested Loop") || strings.Contains(plan, "Merge Join") || strings.Contains(plan, "Hash Join") {
				t.Fatalf("want a nested loop of lookups by seq, got:\n%s", plan)
			}
			if !strings.Contains(plan, "Index Scan using events_pkey") && !strings.Contains(plan, "Index Scan using buckets_pkey") {
				t.Fatalf("want rows read by their primary key, got:\n%s", plan)
			}
		})
	}
}

// explain plans query with nested loops priced out, in a transaction
// rolled back after.
func explain(t *testing.T, s *Store, query string, args ...any) string {
	t.Helper()
	ctx := context.Background()
	var plan strings.Builder
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL enable_nestloop = off`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "EXPLAIN "+query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				return err
			}
			plan.WriteString(line + "\n")
		}
		if err := rows.Err(); err != nil {
			return err
		}
		return tx.Rollback(ctx)
	})
	if err != nil && err != pgx.ErrTxClosed {
		t.Fatal(err)
	}
	return plan.String()
}

// The statements on buckets plan each execution, for their parameters and
// the table as it is (see tx.customPlan); the rest keep the session's
// setting; a URL that sets plan_cache_mode rules everything.
func TestPlanCacheMode(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	const custom, back = "SET LOCAL plan_cache_mode = force_custom_plan", "SET LOCAL plan_cache_mode = DEFAULT"
	for _, tc := range []struct {
		name, url string
		switches  bool
	}{
		{"default", url, true},
		{"set in the URL", url + sep + "plan_cache_mode=force_generic_plan", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(ctx, tc.url, Options{Schema: schema})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var session string
			if err := s.pool.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&session); err != nil {
				t.Fatal(err)
			}
			show := func(x *tx) string {
				var v string
				if err := x.db.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&v); err != nil {
					t.Error(err)
				}
				return v
			}
			queued := func(x *tx) []string {
				var out []string
				for _, p := range x.pending {
					if st, ok := p.(*stmt); ok {
						out = append(out, st.sql)
					}
				}
				return out
			}
			var during, after string
			var afterLock, afterSave []string
			err = s.Write(ctx, func(atx allot.Tx) error {
				x := atx.(*tx)
				x.customPlan(true)
				during = show(x)
				x.customPlan(false)
				if _, err := x.LockBuckets(ctx, []allot.BucketSpec{{BucketKey: allot.BucketKey{ResourceID: "r", Key: "k"}}}); err != nil {
					return err
				}
				afterLock = queued(x) // the switch back, after the SELECT went
				if err := x.SaveBuckets(ctx, []allot.Bucket{{BucketKey: allot.BucketKey{ResourceID: "r", Key: "k"}, Capacity: 1}}); err != nil {
					return err
				}
				afterSave = queued(x)
				after = show(x)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			wantDuring, wantLock, wantSave := session, 0, 1
			if tc.switches {
				wantDuring, wantLock, wantSave = "force_custom_plan", 1, 4
			}
			if during != wantDuring || after != session {
				t.Fatalf("plan_cache_mode %q while switched, %q after; want %q, %q", during, after, wantDuring, session)
			}
			if len(afterLock) != wantLock || (wantLock == 1 && afterLock[0] != back) {
				t.Fatalf("after LockBuckets, queued %q", afterLock)
			}
			if len(afterSave) != wantSave || (tc.switches && (afterSave[1] != custom || afterSave[3] != back)) {
				t.Fatalf("after SaveBuckets, queued %q", afterSave)
			}
		})
	}
}
