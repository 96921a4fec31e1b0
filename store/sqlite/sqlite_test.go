package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/store/sqlite"
	"github.com/allot/allot/store/storetest"
)

func open(t testing.TB) allot.Store {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "allot.db"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) { storetest.Run(t, open) }

// TestReopen checks that data and migrations survive closing the file.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "allot.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Write(ctx, func(tx allot.Tx) error {
		return tx.InsertResource(ctx, allot.Resource{ID: "r", Name: "r", Kind: allot.KindStock, Capacity: 3})
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.GetResource(ctx, "r")
	if err != nil || r.Capacity != 3 {
		t.Fatalf("after reopen: %+v, %v", r, err)
	}
}

// TestPathIsAFileName: the database is the file named, whatever characters
// a SQLite URI would read otherwise ('#', '?', '%').
func TestPathIsAFileName(t *testing.T) {
	for _, name := range []string{"plain.db", "a#b.db", "q?x.db", "p%41.db", "sp ace.db"} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			s, err := sqlite.Open(ctx, filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			err = s.Write(ctx, func(tx allot.Tx) error {
				return tx.InsertResource(ctx, allot.Resource{ID: "r", Name: "r", Kind: allot.KindStock, Capacity: 3})
			})
			s.Close()
			if err != nil {
				t.Fatal(err)
			}
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, e := range ents {
				found = found || e.Name() == name
				if !strings.HasPrefix(e.Name(), name) {
					t.Errorf("opening %q made the file %q", name, e.Name())
				}
			}
			if !found {
				t.Errorf("opening %q made no file of that name", name)
			}
		})
	}
}

func BenchmarkEngine(b *testing.B) { storetest.Bench(b, open) }

// openFile opens a store on a new file, closed when the test ends, and
// returns the file's path.
func openFile(t *testing.T) (*sqlite.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "allot.db")
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// TestBackgroundCheckpoint: commits do not checkpoint the WAL themselves,
// the store's loop does, so the database file takes in what was written
// while the store stays open.
func TestBackgroundCheckpoint(t *testing.T) {
	ctx := context.Background()
	s, path := openFile(t)
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	time.Sleep(300 * time.Millisecond) // the migrations' pages, checkpointed
	before := size()
	for i := range 200 {
		err := s.Write(ctx, func(tx allot.Tx) error {
			return tx.InsertResource(ctx, allot.Resource{ID: fmt.Sprintf("r%d", i), Name: strings.Repeat("x", 500), Kind: allot.KindStock, Capacity: 3})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for size() <= before {
		if time.Now().After(deadline) {
			t.Fatalf("the database file stayed at %d bytes: nothing was checkpointed", before)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWALStartsOverUnderSteadyWrites: with writes back to back, the WAL
// still starts over from its first frame (a new salt in its header), so
// its file stops growing. Before, only a pause between writes let it: a
// server under steady load grew its WAL by tens of MB a second.
func TestWALStartsOverUnderSteadyWrites(t *testing.T) {
	ctx := context.Background()
	s, path := openFile(t)
	salt := func() string {
		f, err := os.Open(path + "-wal")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var h [24]byte
		if _, err := f.ReadAt(h[:], 0); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%x", h[16:24])
	}
	name := strings.Repeat("x", 3000)
	var first string
	var crossed time.Time
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		err := s.Write(ctx, func(tx allot.Tx) error {
			for j := range 10 {
				if err := tx.InsertResource(ctx, allot.Resource{ID: fmt.Sprintf("r%d-%d", i, j), Name: name, Kind: allot.KindStock, Capacity: 1}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		switch now := salt(); {
		case first == "":
			first = now
		case now != first:
			return
		}
		fi, err := os.Stat(path + "-wal")
		if err != nil {
			t.Fatal(err)
		}
		if crossed.IsZero() && fi.Size() > 16<<20 {
			crossed = time.Now()
		}
		// Past 16 MB the store lets the WAL start over within a tick or
		// two of its 200 ms checkpoint loop; allow ten, and three times
		// the size (on storage fast enough to write that in ten ticks).
		late := !crossed.IsZero() && time.Since(crossed) > 2*time.Second && fi.Size() > 48<<20
		if late || time.Now().After(deadline) {
			t.Fatalf("after %d transactions back to back the WAL has not started over; it holds %d bytes", i+1, fi.Size())
		}
	}
}

// A savepoint undoes exactly what its function wrote, buffered or not,
// including a buffered write that failed; what came before it stays, and
// the transaction commits.
func TestSavepoint(t *testing.T) {
	ctx := context.Background()
	hold := func(id string) allot.Hold {
		return allot.Hold{ID: id, Status: allot.HoldActive, ExpiresAt: time.Now().Add(time.Hour), CreatedAt: time.Now(),
			Lines: []allot.Line{{ResourceID: "r", Quantity: 1}}}
	}
	for _, tc := range []struct {
		name string
		fn   func(tx allot.Tx) error
		kept []string // holds that must exist after commit, besides "before"
	}{
		{"success keeps the function's writes", func(tx allot.Tx) error { return tx.InsertHold(ctx, hold("inside")) }, []string{"inside"}},
		{"a refusal undoes a buffered write", func(tx allot.Tx) error {
			if err := tx.InsertHold(ctx, hold("inside")); err != nil {
				return err
			}
			return fmt.Errorf("refused")
		}, nil},
		{"a refusal undoes a written one", func(tx allot.Tx) error {
			if err := tx.InsertHold(ctx, hold("inside")); err != nil {
				return err
			}
			if _, err := tx.GetHold(ctx, "inside"); err != nil { // the read writes the buffer
				return err
			}
			return fmt.Errorf("refused")
		}, nil},
		{"a failed buffered write is undone", func(tx allot.Tx) error {
			if err := tx.InsertHold(ctx, hold("before")); err != nil { // a duplicate: fails when written
				return err
			}
			_, err := tx.GetHold(ctx, "before")
			if err == nil {
				return fmt.Errorf("the duplicate insert did not fail")
			}
			return err
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			defer s.Close()
			var failed error
			err := s.Write(ctx, func(tx allot.Tx) error {
				if err := tx.InsertHold(ctx, hold("before")); err != nil {
					return err
				}
				var err error
				failed, err = tx.(allot.Savepointer).Savepoint(ctx, func() error { return tc.fn(tx) })
				return err
			})
			if err != nil {
				t.Fatalf("the transaction failed: %v", err)
			}
			if (failed == nil) != (tc.kept != nil) {
				t.Fatalf("Savepoint reported %v", failed)
			}
			for _, id := range append([]string{"before"}, tc.kept...) {
				if _, err := s.GetHold(ctx, id); err != nil {
					t.Fatalf("hold %s: %v", id, err)
				}
			}
			if tc.kept == nil {
				if _, err := s.GetHold(ctx, "inside"); err == nil {
					t.Fatal("the savepoint's hold survived its rollback")
				}
			}
		})
	}
}

// Every connection's pragmas, as the store relies on them: durable commits
// (FULL), and statement journals and savepoints in memory (a batch's
// multi-row statements and its numbering savepoint otherwise spill to a
// temporary file, several writes per batch).
func TestPragmas(t *testing.T) {
	ctx := context.Background()
	s := open(t).(*sqlite.Store)
	defer s.Close()
	for _, p := range []struct {
		name string
		want string
	}{{"journal_mode", "wal"}, {"synchronous", "2"}, {"temp_store", "2"}, {"foreign_keys", "1"}, {"journal_size_limit", "67108864"}} {
		var got string
		if err := s.DB().QueryRowContext(ctx, "PRAGMA "+p.name).Scan(&got); err != nil || got != p.want {
			t.Errorf("PRAGMA %s = %q (%v), want %q", p.name, got, err, p.want)
		}
	}
}

// TestSlimWritesMigration upgrades a database made by migrations 0001-0007,
// with holds and events in it, and checks that 0008 keeps every row, that
// event seqs go on from the last one, and that the b-trees it drops are
// gone.
func TestSlimWritesMigration(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "allot.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	names, err := filepath.Glob("migrations/*.sql")
	if err != nil || len(names) < 8 {
		t.Fatalf("migrations: %v, %v", names, err)
	}
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%.60s: %v", q, err)
		}
	}
	exec(`CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)`)
	for _, n := range names {
		if filepath.Base(n) >= "0008" {
			break
		}
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		exec(string(b))
		exec(`INSERT INTO schema_migrations VALUES (?, 0)`, filepath.Base(n))
	}
	exec(`INSERT INTO holds (id, status, customer_id, expires_at, created_at, order_id, lines) VALUES ('hld_1', 'active', 'c', 2000000, 1000000, '', '[{"resource_id":"r","quantity":2}]')`)
	// seqs with gaps, as a rolled-back insert leaves them: each must keep
	// its own.
	seqs := []int64{5, 9, 20}
	for i, no := range []any{int64(1), int64(2), nil} {
		exec(`INSERT INTO events (seq, id, type, resource_id, at, payload, change_no) VALUES (?, ?, 'hold.created', 'r', 1000000, ?, ?)`,
			seqs[i], fmt.Sprintf("evt_%d", i+1), fmt.Sprintf(`{"n":%d}`, i+1), no)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := s.GetHold(ctx, "hld_1")
	if err != nil || h.Status != allot.HoldActive || h.CustomerID != "c" || len(h.Lines) != 1 || h.Lines[0].Quantity != 2 {
		t.Fatalf("hold after the migration: %+v, %v", h, err)
	}
	evs, err := s.EventsAfter(ctx, 0, 10)
	if err != nil || len(evs) != 3 {
		t.Fatalf("events after the migration: %+v, %v", evs, err)
	}
	for i, e := range evs {
		if e.Seq != seqs[i] || e.ID != fmt.Sprintf("evt_%d", i+1) || string(e.Payload) != fmt.Sprintf(`{"n":%d}`, i+1) {
			t.Fatalf("event %d after the migration: %+v", i, e)
		}
	}
	if evs[0].ChangeNo != 1 || evs[1].ChangeNo != 2 || evs[2].ChangeNo != 0 {
		t.Fatalf("change numbers after the migration: %d %d %d", evs[0].ChangeNo, evs[1].ChangeNo, evs[2].ChangeNo)
	}
	err = s.Write(ctx, func(tx allot.Tx) error {
		return tx.AppendEvents(ctx, []allot.Event{{ID: "evt_4", Type: "hold.created", At: time.Now(), Payload: []byte(`{}`)}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if evs, err = s.EventsAfter(ctx, 20, 10); err != nil || len(evs) != 1 || evs[0].Seq != 21 {
		t.Fatalf("the next event: %+v, %v", evs, err)
	}
	var schema string
	if err := s.DB().QueryRowContext(ctx, `SELECT group_concat(name || ':' || COALESCE(sql, ''), ' | ') FROM sqlite_schema WHERE tbl_name IN ('holds', 'events')`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"WITHOUT ROWID", "holds_status_expiry", "events_change_no", "events_unsequenced"} {
		if !strings.Contains(schema, want) {
			t.Errorf("schema lacks %q: %s", want, schema)
		}
	}
	for _, gone := range []string{"sqlite_autoindex", "AUTOINCREMENT", "_new"} {
		if strings.Contains(schema, gone) {
			t.Errorf("schema still has %q: %s", gone, schema)
		}
	}
	var n int
	if err := s.DB().QueryRowContext(ctx, `SELECT count(*) FROM sqlite_sequence WHERE name = 'events'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("sqlite_sequence still counts events: %d, %v", n, err)
	}
	s.Close()
}
