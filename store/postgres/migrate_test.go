package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/allot/allot"
	"github.com/allot/allot/store/postgres/pgtest"
)

// 0008 moves change numbers out of the events table: an event a reader
// has seen keeps its number, one not yet numbered is still waiting, and
// one written the old way afterwards waits too.
func TestMigrationKeepsChangeNumbers(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	old, err := Open(ctx, url, Options{Schema: schema, migrateUpTo: "0007_opportunity_deleted.sql"})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	for _, ev := range []struct {
		id     string
		change any
	}{{"evt_a", 7}, {"evt_b", 8}, {"evt_c", nil}} {
		if _, err := old.pool.Exec(ctx, `INSERT INTO events (id, type, at, payload, change_no) VALUES ($1, 'hold.created', $2, '{}', $3)`, ev.id, at, ev.change); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := old.pool.Exec(ctx, `UPDATE counters SET value = 8 WHERE name = 'change_no'`); err != nil {
		t.Fatal(err)
	}
	old.Close()

	s, err := Open(ctx, url, Options{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs, err := s.EventsAfterChange(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].ID != "evt_a" || evs[0].ChangeNo != 7 || evs[1].ID != "evt_b" || evs[1].ChangeNo != 8 {
		t.Fatalf("numbered events after the migration: %+v", evs)
	}
	// A node still running the previous version writes an event as it
	// did, without queueing it: the trigger does.
	if _, err := s.pool.Exec(ctx, `INSERT INTO events (id, type, at, payload) VALUES ('evt_d', 'hold.created', $1, '{}')`, at); err != nil {
		t.Fatal(err)
	}
	// So does one written by a session whose search_path is elsewhere (an
	// operator's script): the trigger finds this schema's queue.
	other, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.Exec(ctx, `INSERT INTO `+pgx.Identifier{schema, "events"}.Sanitize()+` (id, type, at, payload) VALUES ('evt_e', 'hold.created', $1, '{}')`, at)
	other.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pending []string
	err = s.Write(ctx, func(tx allot.Tx) error {
		evs, err := tx.UnsequencedEvents(ctx, 10)
		for _, e := range evs {
			pending = append(pending, e.ID)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 3 || pending[0] != "evt_c" || pending[1] != "evt_d" || pending[2] != "evt_e" {
		t.Fatalf("events waiting for a number after the migration: %v, want [evt_c evt_d evt_e]", pending)
	}
	all, err := s.EventsAfter(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 || all[0].ChangeNo != 7 || all[1].ChangeNo != 8 || all[2].ChangeNo != 0 || all[4].ChangeNo != 0 {
		t.Fatalf("events by seq after the migration: %+v", all)
	}
}

// A search_path that names no existing schema is reported as such, with
// what to do, not as PostgreSQL's bare "no schema has been selected".
func TestOpenWithoutSchemaSaysSo(t *testing.T) {
	url := pgtest.URL(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	_, err := Open(context.Background(), url+sep+"search_path=allot_no_such_schema", Options{})
	if err == nil || !strings.Contains(err.Error(), "CREATE SCHEMA") {
		t.Fatalf("open: %v, want the missing schema named with what to do", err)
	}
}
