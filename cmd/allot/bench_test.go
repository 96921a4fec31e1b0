package main

import (
	"reflect"
	"testing"

	"github.com/allot/allot/engine"
)

// The bench reports the server's counters for the measured part of a run:
// the snapshot at the end less the one taken when the warm-up ended.
func TestStatsSince(t *testing.T) {
	before := &engine.Stats{Batches: 10, Ops: 100, FailedBatches: 1, JoinedOps: 4, MeanBatchMs: 2, MaxBatchMs: 40, BatchesOverMs: map[string]int64{"5": 3, "10": 1}}
	after := engine.Stats{Batches: 30, Ops: 500, FailedBatches: 1, JoinedOps: 10, MeanBatchMs: 3, MaxBatchMs: 40, BatchesOverMs: map[string]int64{"5": 5, "10": 1}}
	for _, tc := range []struct {
		name   string
		before *engine.Stats
		want   engine.Stats
	}{
		{"no snapshot: everything", nil, after},
		{"since the warm-up", before, engine.Stats{Batches: 20, Ops: 400, FailedBatches: 0, JoinedOps: 6, MeanBatchSize: 20, MeanBatchMs: 3.5, MaxBatchMs: 40,
			BatchesOverMs: map[string]int64{"5": 2, "10": 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := statsSince(tc.before, after)
			// The whole struct: a counter added to Stats but not to
			// statsSince shows here.
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
