package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/allot/allot/store/postgres/pgtest"
)

// The sequencer and the feeds read a few events by seq. Planned as a join,
// PostgreSQL may choose a merge or hash join that reads the events table
// from its first row on every call: work that grows with every event ever
// written (a hot-bucket benchmark showed 34,000 rows read per sequencer
// run). The queries must leave it a per-event lookup only, whatever the
// planner's statistics say: with nested loops priced out, they still plan
// as one.
func TestEventLookupsPlanAsNestedLoops(t *testing.T) {
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
	if _, err := s.pool.Exec(ctx, `ANALYZE events; ANALYZE event_changes; ANALYZE events_pending`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		query string
		args  []any
	}{
		{"unsequenced", unsequencedEventsSQL, []any{1000}},
		{"after change", eventsAfterChangeSQL, []any{0, 1000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan := explain(t, s, tc.query, tc.args...)
			if !strings.Contains(plan, "Nested Loop") || strings.Contains(plan, "Merge Join") || strings.Contains(plan, "Hash Join") {
				t.Fatalf("want a nested loop of lookups by seq, got:\n%s", plan)
			}
			if !strings.Contains(plan, "Index Scan using events_pkey") {
				t.Fatalf("want events read by their primary key, got:\n%s", plan)
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

// Every connection plans each execution for its parameters and the tables
// as they are (see Open), unless the URL chose otherwise.
func TestPlanCacheMode(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	for _, tc := range []struct {
		name, url, want string
	}{
		{"default", url, "force_custom_plan"},
		{"set in the URL", url + sep + "plan_cache_mode=auto", "auto"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(ctx, tc.url, Options{Schema: schema})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var got string
			if err := s.pool.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("plan_cache_mode = %q, want %q", got, tc.want)
			}
		})
	}
}
