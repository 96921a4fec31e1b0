package storetest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/allot/allot"
	"github.com/allot/allot/store/postgres"
	"github.com/allot/allot/store/postgres/pgtest"
	"github.com/allot/allot/store/sqlite"
)

// Stores opens a fresh store of each kind, for tests above the stores that
// must hold on both: a SQLite file in a temporary directory, and a
// PostgreSQL schema of its own (skipped, or failed when services are
// required, if PostgreSQL is unreachable).
func Stores() map[string]Opener {
	return map[string]Opener{
		"sqlite": func(t testing.TB) allot.Store {
			s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "allot.db"))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		"postgres": func(t testing.TB) allot.Store {
			url := pgtest.URL(t)
			s, err := postgres.Open(context.Background(), url, postgres.Options{Schema: pgtest.Schema(t, url)})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
}
