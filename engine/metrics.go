package engine

import (
	"sync/atomic"
	"time"
)

// metrics counts what the write path does, for operators and benchmarks.
type metrics struct {
	batches, ops, failed, nanos atomic.Int64
}

func (m *metrics) batch(size int, took time.Duration, err error) {
	m.batches.Add(1)
	m.ops.Add(int64(size))
	m.nanos.Add(int64(took))
	if err != nil {
		m.failed.Add(1)
	}
}

// Stats is a snapshot of the write path's counters.
type Stats struct {
	Batches       int64   `json:"batches"`
	Ops           int64   `json:"ops"`
	FailedBatches int64   `json:"failed_batches"`
	MeanBatchSize float64 `json:"mean_batch_size"`
	MeanBatchMs   float64 `json:"mean_batch_ms"`
}

// Stats returns the counters since the engine started.
func (e *Engine) Stats() Stats {
	s := Stats{Batches: e.metrics.batches.Load(), Ops: e.metrics.ops.Load(), FailedBatches: e.metrics.failed.Load()}
	if s.Batches > 0 {
		s.MeanBatchSize = float64(s.Ops) / float64(s.Batches)
		s.MeanBatchMs = float64(e.metrics.nanos.Load()) / float64(s.Batches) / 1e6
	}
	return s
}
