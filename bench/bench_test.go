package bench_test

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/allot/allot/bench"
	"github.com/allot/allot/engine"
	allothttp "github.com/allot/allot/http"
	"github.com/allot/allot/store/sqlite"
)

// The load generator against a real server on SQLite: each workload runs,
// measures only after its warm-up, and the audit over the API finds
// nothing oversold; a flash sale sells exactly its capacity.
func TestWorkloads(t *testing.T) {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(s, engine.Options{Batching: engine.Batching{Workers: 2}})
	srv := httptest.NewServer(allothttp.New(eng, nil))
	t.Cleanup(func() { srv.Close(); eng.Close(); s.Close() })

	for i, tc := range []struct {
		workload string
		requests int
		warmup   time.Duration
	}{
		{"hot", 0, time.Second},
		{"hotel", 0, 0},
		{"mixed", 0, 100 * time.Millisecond},
		{"health", 0, 100 * time.Millisecond},
		{"flash-sale", 60, time.Second}, // the warm-up is ignored: every buyer counts
	} {
		t.Run(tc.workload, func(t *testing.T) {
			cfg := bench.Config{Target: srv.URL, Workload: tc.workload, Clients: 8, Duration: 400 * time.Millisecond,
				Requests: tc.requests, Capacity: 20, Rooms: 5, Warmup: tc.warmup, Prefix: string(rune('a'+i)) + "-"}
			start := time.Now()
			r, err := bench.Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if r.Errors != 0 {
				t.Fatalf("%d errors: %v", r.Errors, r.FirstErrors)
			}
			if r.OK == 0 || len(r.Series) == 0 || r.Latency.P50 <= 0 || r.Latency.Max < r.Latency.P99 {
				t.Fatalf("implausible report: %+v", r)
			}
			if tc.requests == 0 && time.Since(start) < tc.warmup+cfg.Duration {
				t.Fatalf("the run took %v, less than its warm-up and duration", time.Since(start))
			}
			if tc.requests == 0 && (r.Seconds < cfg.Duration.Seconds()*0.9 || r.Seconds > (cfg.Duration+tc.warmup/2+100*time.Millisecond).Seconds()) {
				t.Fatalf("measured %.2f s, want about %v: the warm-up (%v) must not be counted", r.Seconds, cfg.Duration, tc.warmup)
			}
			if r.WarmupErrors != 0 {
				t.Fatalf("%d errors in the warm-up: %v", r.WarmupErrors, r.FirstErrors)
			}
			inSeries := 0
			for _, sec := range r.Series {
				inSeries += sec.Requests
			}
			if int64(inSeries) != r.Requests {
				t.Fatalf("the series holds %d requests, the report %d", inSeries, r.Requests)
			}
			if tc.workload == "flash-sale" {
				if r.Requests != int64(tc.requests) || r.Won != int64(cfg.Capacity) || r.OK+r.Refused != r.Requests {
					t.Fatalf("flash sale: %d buyers, %d won, %d refused; want %d buyers and %d won", r.Requests, r.Won, r.Refused, tc.requests, cfg.Capacity)
				}
			}
			over, err := bench.Oversold(context.Background(), srv.URL, r.Resources)
			if err != nil {
				t.Fatal(err)
			}
			if over != 0 {
				t.Fatalf("%d units oversold", over)
			}
		})
	}
}
