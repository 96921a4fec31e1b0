// Package bench is Allot's load generator: workloads that drive a running
// server over HTTP, with latency percentiles, a per-second series, a chart,
// and the oversold check at the end.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Workloads are the loads bench knows.
var Workloads = []string{"hot", "flash-sale", "hotel", "mixed", "health"}

// Config is one run.
type Config struct {
	Target   string // base URL of the server
	Workload string
	Clients  int
	Duration time.Duration
	Requests int // stop after this many requests; 0: run for Duration
	Capacity int // flash-sale: units on sale
	Rooms    int // hotel: room types
	// Rate, when positive, paces the clients to this many requests per
	// second in all; latency then counts from each request's scheduled
	// time, so a stall is not hidden by the requests it delays.
	Rate float64
	// Warmup runs the load this long before measuring: a freshly started
	// server opens connections and fills caches in its first second, which
	// a server that has been up does not repeat. Ignored with Requests (a
	// flash sale's buyers all count).
	Warmup time.Duration
	// Measuring, if set, is called once, when measuring starts (after the
	// warm-up): the caller may snapshot the server's counters then.
	Measuring func()
	Prefix    string
	Progress  io.Writer
}

// Report is what a run measured.
type Report struct {
	Workload string  `json:"workload"`
	Target   string  `json:"target"`
	Engine   string  `json:"engine,omitempty"`
	Clients  int     `json:"clients"`
	Warmup   float64 `json:"warmup_seconds,omitempty"`
	Seconds  float64 `json:"seconds"`
	Requests int64   `json:"requests"`
	OK       int64   `json:"ok"`
	Refused  int64   `json:"refused"`
	Errors   int64   `json:"errors"`
	// WarmupErrors failed during the warm-up: not in Requests or Errors,
	// but never hidden.
	WarmupErrors int64    `json:"warmup_errors,omitempty"`
	RequestsPS   float64  `json:"requests_per_second"`
	OKPS         float64  `json:"ok_per_second"`
	Latency      Latency  `json:"latency_ms"`
	Series       []Second `json:"series"`
	Rate         float64  `json:"target_rate,omitempty"`
	Won          int64    `json:"won,omitempty"`
	Capacity     int      `json:"capacity,omitempty"`
	Resources    []string `json:"-"`
	FirstErrors  []string `json:"first_errors,omitempty"`
}

// Latency percentiles, in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Second is one second of the run.
type Second struct {
	T        int     `json:"t"`
	Requests int     `json:"requests"`
	OK       int     `json:"ok"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
}

type outcome int

const (
	ok outcome = iota
	refused
	failed
)

type sample struct {
	at  time.Duration
	lat time.Duration
	out outcome
}

// client is one simulated user's connection to the server.
type client struct {
	http *http.Client
	base string
	rnd  *rand.Rand
	// buf holds the last response's body: what call returns is valid until
	// the client's next call.
	buf bytes.Buffer
	// state for the mixed workload
	holds, orders []string
}

func (c *client) call(ctx context.Context, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte: // encoded once by the workload: the load generator shares the server's cores
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	c.buf.Reset()
	_, err = c.buf.ReadFrom(res.Body)
	return res.StatusCode, c.buf.Bytes(), err
}

// workload sets up its resources and returns the request one client makes.
type workload struct {
	setup func(ctx context.Context, c *client) ([]string, error)
	step  func(ctx context.Context, c *client) (outcome, error)
}

// encode is a request body encoded once, for a workload that sends it on
// every request.
func encode(v map[string]any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of strings and numbers always encode
	}
	return b
}

func line(res string, q int) map[string]any { return map[string]any{"resource_id": res, "quantity": q} }

func judge(status int, body []byte, okStatus ...int) (outcome, error) {
	if slices.Contains(okStatus, status) {
		return ok, nil
	}
	if status == 409 || status == 410 {
		return refused, nil
	}
	return failed, fmt.Errorf("status %d: %.200s", status, body)
}

func create(ctx context.Context, c *client, body map[string]any) error {
	st, b, err := c.call(ctx, "POST", "/v1/resources", body)
	if err != nil {
		return err
	}
	if st != 201 {
		return fmt.Errorf("creating resource %v: %d %s", body["id"], st, b)
	}
	return nil
}

func (cfg Config) workload() (workload, error) {
	p := cfg.Prefix
	switch cfg.Workload {
	case "health":
		return workload{
			setup: func(context.Context, *client) ([]string, error) { return nil, nil },
			step: func(ctx context.Context, c *client) (outcome, error) {
				st, b, err := c.call(ctx, "GET", "/healthz", nil)
				if err != nil {
					return failed, err
				}
				return judge(st, b, 200)
			},
		}, nil
	case "hot":
		id := p + "hot"
		body := encode(map[string]any{"lines": []any{line(id, 1)}, "ttl_seconds": 3600})
		return workload{
			setup: func(ctx context.Context, c *client) ([]string, error) {
				return []string{id}, create(ctx, c, map[string]any{"id": id, "name": "hot item", "kind": "stock", "capacity": 1_000_000_000})
			},
			step: func(ctx context.Context, c *client) (outcome, error) {
				st, b, err := c.call(ctx, "POST", "/v1/holds", body)
				if err != nil {
					return failed, err
				}
				return judge(st, b, 201)
			},
		}, nil
	case "flash-sale":
		id := p + "flash"
		body := encode(map[string]any{"lines": []any{line(id, 1)}})
		return workload{
			setup: func(ctx context.Context, c *client) ([]string, error) {
				return []string{id}, create(ctx, c, map[string]any{"id": id, "name": "flash sale", "kind": "stock", "capacity": cfg.Capacity})
			},
			step: func(ctx context.Context, c *client) (outcome, error) {
				st, b, err := c.call(ctx, "POST", "/v1/orders", body)
				if err != nil {
					return failed, err
				}
				return judge(st, b, 201)
			},
		}, nil
	case "hotel":
		start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		room := func(i int) string { return fmt.Sprintf("%sroom-%04d", p, i) }
		return workload{
			setup: func(ctx context.Context, c *client) ([]string, error) {
				ids := make([]string, cfg.Rooms)
				for i := range ids {
					ids[i] = room(i)
					if err := create(ctx, c, map[string]any{"id": ids[i], "name": ids[i], "kind": "nightly", "capacity": 20, "price": map[string]string{"amount": "100.00", "currency": "EUR"}}); err != nil {
						return nil, err
					}
				}
				return ids, nil
			},
			step: func(ctx context.Context, c *client) (outcome, error) {
				in := start.AddDate(0, 0, c.rnd.IntN(365-7))
				out := in.AddDate(0, 0, 1+c.rnd.IntN(7))
				st, b, err := c.call(ctx, "POST", "/v1/orders", map[string]any{"lines": []any{map[string]any{
					"resource_id": room(c.rnd.IntN(cfg.Rooms)), "quantity": 1, "check_in": in.Format("2006-01-02"), "check_out": out.Format("2006-01-02")}}})
				if err != nil {
					return failed, err
				}
				return judge(st, b, 201)
			},
		}, nil
	case "mixed":
		const n = 10
		stock := func(i int) string { return fmt.Sprintf("%sshop-%d", p, i) }
		room := func(i int) string { return fmt.Sprintf("%sinn-%d", p, i) }
		return workload{
			setup: func(ctx context.Context, c *client) ([]string, error) {
				var ids []string
				for i := range n {
					if err := create(ctx, c, map[string]any{"id": stock(i), "name": "stock", "kind": "stock", "capacity": 50}); err != nil {
						return nil, err
					}
					if err := create(ctx, c, map[string]any{"id": room(i), "name": "room", "kind": "nightly", "capacity": 5}); err != nil {
						return nil, err
					}
					ids = append(ids, stock(i), room(i))
				}
				return ids, nil
			},
			step: func(ctx context.Context, c *client) (outcome, error) { return mixedStep(ctx, c, stock, room, n) },
		}, nil
	}
	return workload{}, fmt.Errorf("unknown workload %q; one of %v", cfg.Workload, Workloads)
}

func mixedStep(ctx context.Context, c *client, stock, room func(int) string, n int) (outcome, error) {
	lines := func() []any {
		if c.rnd.IntN(2) == 0 {
			return []any{line(stock(c.rnd.IntN(n)), 1+c.rnd.IntN(3))}
		}
		in := time.Date(2030, 6, 1+c.rnd.IntN(20), 0, 0, 0, 0, time.UTC)
		return []any{map[string]any{"resource_id": room(c.rnd.IntN(n)), "quantity": 1,
			"check_in": in.Format("2006-01-02"), "check_out": in.AddDate(0, 0, 1+c.rnd.IntN(3)).Format("2006-01-02")}}
	}
	pop := func(s *[]string) string {
		if len(*s) == 0 {
			return ""
		}
		i := c.rnd.IntN(len(*s))
		v := (*s)[i]
		*s = slices.Delete(*s, i, i+1)
		return v
	}
	var st int
	var b []byte
	var err error
	okStatus := 201
	switch r := c.rnd.IntN(100); {
	case r < 30: // a hold that may expire on its own
		st, b, err = c.call(ctx, "POST", "/v1/holds", map[string]any{"lines": lines(), "ttl_seconds": 1 + c.rnd.IntN(3)})
		var h struct{ ID string }
		if err == nil && st == 201 && json.Unmarshal(b, &h) == nil {
			c.holds = append(c.holds, h.ID)
		}
	case r < 45:
		if id := pop(&c.holds); id != "" {
			st, b, err = c.call(ctx, "POST", "/v1/orders", map[string]any{"hold_id": id})
			break
		}
		fallthrough
	case r < 60:
		st, b, err = c.call(ctx, "POST", "/v1/orders", map[string]any{"lines": lines()})
		var o struct{ ID string }
		if err == nil && st == 201 && json.Unmarshal(b, &o) == nil {
			c.orders = append(c.orders, o.ID)
		}
	case r < 70:
		if id := pop(&c.orders); id != "" {
			okStatus = 200
			st, b, err = c.call(ctx, "POST", "/v1/orders/"+id+"/cancel", nil)
			break
		}
		fallthrough
	case r < 80:
		if id := pop(&c.holds); id != "" {
			okStatus = 204
			st, b, err = c.call(ctx, "DELETE", "/v1/holds/"+id, nil)
			break
		}
		fallthrough
	default:
		okStatus = 200
		st, b, err = c.call(ctx, "GET", fmt.Sprintf("/v1/resources/%s/availability?from=2030-06-01&to=2030-06-25", room(c.rnd.IntN(n))), nil)
	}
	if err != nil {
		return failed, err
	}
	return judge(st, b, okStatus)
}

// Run sets the workload up on the server and drives it with cfg.Clients
// concurrent clients until cfg.Duration or cfg.Requests.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Clients < 1 {
		return nil, fmt.Errorf("clients must be at least 1")
	}
	wl, err := cfg.workload()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{MaxIdleConns: cfg.Clients * 2, MaxIdleConnsPerHost: cfg.Clients * 2, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	setupClient := &client{http: hc, base: cfg.Target, rnd: rand.New(rand.NewPCG(1, 2))}
	rep := &Report{Workload: cfg.Workload, Target: cfg.Target, Clients: cfg.Clients, Capacity: cfg.Capacity, Rate: cfg.Rate}
	if rep.Resources, err = wl.setup(ctx, setupClient); err != nil {
		return nil, fmt.Errorf("setting up %s: %w", cfg.Workload, err)
	}

	warmup := cfg.Warmup
	if cfg.Requests > 0 || warmup < 0 {
		warmup = 0
	}
	rep.Warmup = warmup.Seconds()
	runCtx, cancel := context.WithTimeout(ctx, warmup+cfg.Duration)
	defer cancel()
	var issued, nOK, nRefused, nFailed, nWarmFailed atomic.Int64
	var errMu sync.Mutex
	start := time.Now()
	measured := start.Add(warmup) // samples before this are the warm-up's
	switch {
	case cfg.Measuring == nil:
	case warmup == 0:
		cfg.Measuring() // before the first request
	default:
		t := time.AfterFunc(warmup, cfg.Measuring)
		defer t.Stop()
	}
	samples := make([][]sample, cfg.Clients)
	var wg sync.WaitGroup
	for i := range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &client{http: hc, base: cfg.Target, rnd: rand.New(rand.NewPCG(uint64(i)+1, 7))}
			var interval time.Duration
			next := start
			if cfg.Rate > 0 {
				interval = time.Duration(float64(cfg.Clients) / cfg.Rate * float64(time.Second))
				next = start.Add(interval * time.Duration(i) / time.Duration(cfg.Clients))
			}
			for runCtx.Err() == nil {
				if cfg.Requests > 0 && issued.Add(1) > int64(cfg.Requests) {
					return
				}
				t0 := time.Now()
				if interval > 0 {
					if wait := time.Until(next); wait > 0 {
						select {
						case <-time.After(wait):
						case <-runCtx.Done():
							return
						}
					}
					t0 = next
					next = next.Add(interval)
				}
				out, err := wl.step(runCtx, c)
				if runCtx.Err() != nil && err != nil {
					return // cut off by the end of the run, not a server error
				}
				if t0.Before(measured) {
					if out == failed && nWarmFailed.Add(1) <= 5 {
						errMu.Lock()
						rep.FirstErrors = append(rep.FirstErrors, "warm-up: "+err.Error())
						errMu.Unlock()
					}
					continue
				}
				samples[i] = append(samples[i], sample{at: t0.Sub(measured), lat: time.Since(t0), out: out})
				switch out {
				case ok:
					nOK.Add(1)
				case refused:
					nRefused.Add(1)
				default:
					if nFailed.Add(1) <= 5 {
						errMu.Lock()
						rep.FirstErrors = append(rep.FirstErrors, err.Error())
						errMu.Unlock()
					}
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last int64
progress:
	for {
		select {
		case <-done:
			break progress
		case <-tick.C:
			n := nOK.Load() + nRefused.Load() + nFailed.Load()
			if cfg.Progress != nil && time.Now().After(measured) {
				fmt.Fprintf(cfg.Progress, "  %-10s t=%3.0fs  %8d req/s  ok %d  refused %d  errors %d\n", cfg.Workload, time.Since(measured).Seconds(), n-last, nOK.Load(), nRefused.Load(), nFailed.Load())
			} else if cfg.Progress != nil {
				fmt.Fprintf(cfg.Progress, "  %-10s warming up\n", cfg.Workload)
			}
			last = n
		}
	}
	elapsed := max(time.Since(measured), time.Millisecond) // stopped in the warm-up: nothing measured
	rep.Seconds = elapsed.Seconds()
	rep.WarmupErrors = nWarmFailed.Load()
	rep.OK, rep.Refused, rep.Errors = nOK.Load(), nRefused.Load(), nFailed.Load()
	rep.Requests = rep.OK + rep.Refused + rep.Errors
	rep.RequestsPS = float64(rep.Requests) / rep.Seconds
	rep.OKPS = float64(rep.OK) / rep.Seconds
	if cfg.Workload == "flash-sale" {
		rep.Won = rep.OK
	}
	summarize(rep, samples)
	return rep, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return sorted[i]
}

func summarize(rep *Report, samples [][]sample) {
	var all []time.Duration
	per := map[int][]time.Duration{}
	okPer := map[int]int{}
	for _, ss := range samples {
		for _, s := range ss {
			all = append(all, s.lat)
			sec := int(s.at / time.Second)
			per[sec] = append(per[sec], s.lat)
			if s.out == ok {
				okPer[sec]++
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	rep.Latency = Latency{P50: ms(percentile(all, .50)), P90: ms(percentile(all, .90)), P99: ms(percentile(all, .99))}
	if len(all) > 0 {
		rep.Latency.Max = ms(all[len(all)-1])
	}
	secs := make([]int, 0, len(per))
	for s := range per {
		secs = append(secs, s)
	}
	sort.Ints(secs)
	for _, s := range secs {
		l := per[s]
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		rep.Series = append(rep.Series, Second{T: s, Requests: len(l), OK: okPer[s], P50: ms(percentile(l, .5)), P99: ms(percentile(l, .99))})
	}
}

// Oversold reads every resource's availability through the API and sums
// the units beyond capacity: the check for a server bench cannot open the
// database of.
func Oversold(ctx context.Context, target string, ids []string) (int, error) {
	c := &client{http: &http.Client{Timeout: 30 * time.Second}, base: target}
	total := 0
	for _, id := range ids {
		path := "/v1/resources/" + id + "/availability"
		if st, b, err := c.call(ctx, "GET", "/v1/resources/"+id, nil); err != nil || st != 200 {
			return 0, fmt.Errorf("reading %s: %d %v", id, st, err)
		} else if bytes.Contains(b, []byte(`"kind":"nightly"`)) {
			path += "?from=2030-01-01&to=2031-01-01"
		}
		st, b, err := c.call(ctx, "GET", path, nil)
		if err != nil || st != 200 {
			return 0, fmt.Errorf("availability of %s: %d %v", id, st, err)
		}
		var a struct {
			Buckets []struct{ Capacity, Held, Booked int }
		}
		if err := json.Unmarshal(b, &a); err != nil {
			return 0, err
		}
		for _, bk := range a.Buckets {
			total += max(0, bk.Held+bk.Booked-bk.Capacity)
		}
	}
	return total, nil
}
