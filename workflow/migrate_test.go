package workflow_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/store/postgres"
	"github.com/allot/allot/store/postgres/pgtest"
	"github.com/allot/allot/workflow"
)

// Nodes that start together on a fresh database all come up: River's tables
// are created once, not by each node at the same moment (which failed on a
// duplicate type, an existing table or a deadlock).
func TestNodesStartingTogetherMigrateOnce(t *testing.T) {
	url := pgtest.URL(t)
	for round := range 3 {
		schema := pgtest.Schema(t, url)
		ctx := context.Background()
		const nodes = 4
		stores := make([]*postgres.Store, nodes)
		for i := range stores {
			s, err := postgres.Open(ctx, url, postgres.Options{Schema: schema})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			stores[i] = s
		}
		start := make(chan struct{})
		errs := make([]error, nodes)
		var wg sync.WaitGroup
		for i := range stores {
			wg.Go(func() {
				<-start
				_, errs[i] = workflow.New(ctx, stores[i], workflow.Config{})
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d, node %d: %v", round, i, err)
			}
		}
	}
}

// A pool of one connection is enough to start: the migration lock is not
// held on a connection River's migration needs.
func TestMigrateWithOneConnection(t *testing.T) {
	url := pgtest.URL(t)
	s, err := postgres.Open(context.Background(), url, postgres.Options{Schema: pgtest.Schema(t, url), MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := workflow.New(ctx, s, workflow.Config{}); err != nil {
		t.Fatal(err)
	}
}
