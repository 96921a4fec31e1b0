package postgres_test

import (
	"context"
	"testing"

	"github.com/allot/allot"
	"github.com/allot/allot/store/postgres"
	"github.com/allot/allot/store/postgres/pgtest"
	"github.com/allot/allot/store/storetest"
)

func open(t testing.TB) allot.Store {
	url := pgtest.URL(t)
	s, err := postgres.Open(context.Background(), url, postgres.Options{Schema: pgtest.Schema(t, url)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) { storetest.Run(t, open) }

func BenchmarkEngine(b *testing.B) { storetest.Bench(b, open) }
