package sqlite_test

import (
	"context"
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

func BenchmarkEngine(b *testing.B) { storetest.Bench(b, open) }

// TestBackgroundCheckpoint: commits do not checkpoint the WAL themselves,
// the store's loop does, so the database file takes in what was written
// while the store stays open.
func TestBackgroundCheckpoint(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "allot.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
