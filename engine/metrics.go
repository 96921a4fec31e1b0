package engine

import (
	"strconv"
	"sync/atomic"
	"time"
)

// slowBatchMs are the thresholds Stats counts slow batches over: the tail
// of a request's latency is the batches it waits behind.
var slowBatchMs = [...]int64{5, 10, 20, 50}

// metrics counts what the write path does, for operators and benchmarks.
type metrics struct {
	batches, ops, failed, nanos, maxNanos atomic.Int64
	joined                                atomic.Int64
	slow                                  [len(slowBatchMs)]atomic.Int64
}

func (m *metrics) batch(size int, took time.Duration, err error) {
	m.batches.Add(1)
	m.ops.Add(int64(size))
	m.nanos.Add(int64(took))
	for {
		cur := m.maxNanos.Load()
		if int64(took) <= cur || m.maxNanos.CompareAndSwap(cur, int64(took)) {
			break
		}
	}
	for i, ms := range slowBatchMs {
		if took > time.Duration(ms)*time.Millisecond {
			m.slow[i].Add(1)
		}
	}
	if err != nil {
		m.failed.Add(1)
	}
}

// Stats is a snapshot of the write path's counters.
type Stats struct {
	Batches       int64 `json:"batches"`
	Ops           int64 `json:"ops"`
	FailedBatches int64 `json:"failed_batches"`
	// JoinedOps counts the requests that joined a batch already running
	// (late joining; they are also in Ops).
	JoinedOps     int64   `json:"joined_ops"`
	MeanBatchSize float64 `json:"mean_batch_size"`
	MeanBatchMs   float64 `json:"mean_batch_ms"`
	MaxBatchMs    float64 `json:"max_batch_ms"`
	// BatchesOverMs counts the batches that took longer than 5, 10, 20 and
	// 50 ms, by threshold.
	BatchesOverMs map[string]int64 `json:"batches_over_ms"`
}

// Stats returns the counters since the engine started.
func (e *Engine) Stats() Stats {
	s := Stats{Batches: e.metrics.batches.Load(), Ops: e.metrics.ops.Load(), FailedBatches: e.metrics.failed.Load(),
		JoinedOps: e.metrics.joined.Load(), MaxBatchMs: float64(e.metrics.maxNanos.Load()) / 1e6, BatchesOverMs: map[string]int64{}}
	if s.Batches > 0 {
		s.MeanBatchSize = float64(s.Ops) / float64(s.Batches)
		s.MeanBatchMs = float64(e.metrics.nanos.Load()) / float64(s.Batches) / 1e6
	}
	for i, ms := range slowBatchMs {
		s.BatchesOverMs[strconv.FormatInt(ms, 10)] = e.metrics.slow[i].Load()
	}
	return s
}
