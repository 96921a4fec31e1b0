package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

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

func BenchmarkEngine(b *testing.B) { storetest.Bench(b, open) }
