package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/allot/allot/bench"
	"github.com/allot/allot/engine"
)

const benchUsage = `allot bench: load-test Allot over HTTP and check that nothing was oversold.

  allot bench --workload hot --db postgres://...  --compare   # start servers, measure, compare baselines
  allot bench --workload hotel --db sqlite --clients 32        # a fresh SQLite file
  allot bench --workload mixed --target http://127.0.0.1:8080  # a running server

Workloads: hot (every client holds 1 unit of one stock bucket), flash-sale (--requests buyers race for
--capacity units, one try each), hotel (--rooms room types x 365 nights, random 1-7 night stays),
mixed (holds, orders, cancels, releases, expiries, availability reads), health (the HTTP ceiling).

With --db, bench starts 'allot serve' itself on a fresh database (a new file for sqlite, a new schema
for postgres), profiles its CPU, and audits the database afterwards. --compare adds, in the same run,
the naive engine (one transaction per request), the HTTP ceiling (GET /healthz under the same load)
and, on PostgreSQL with pgbench installed, the raw SQL ceiling. Results go to --out as JSON and SVG.

Flags:
`

type benchRun struct {
	Name     string          `json:"name"`
	Report   *bench.Report   `json:"report,omitempty"`
	Audit    *engine.Audit   `json:"audit,omitempty"`
	Stats    json.RawMessage `json:"server_stats,omitempty"`
	Profile  string          `json:"cpu_profile,omitempty"`
	PgbenchT float64         `json:"pgbench_tps,omitempty"`
	Note     string          `json:"note,omitempty"`
}

type benchFile struct {
	Date     string             `json:"date"`
	Command  string             `json:"command"`
	Machine  string             `json:"machine"`
	Workload string             `json:"workload"`
	DB       string             `json:"db,omitempty"`
	Runs     []benchRun         `json:"runs"`
	Ratios   map[string]float64 `json:"ratios,omitempty"`
	Passed   bool               `json:"invariants_hold"`
}

func runBench(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("allot bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, benchUsage); fs.PrintDefaults() }
	workload := fs.String("workload", "hot", "hot, flash-sale, hotel, mixed or health")
	target := fs.String("target", "", "base URL of a running server")
	db := fs.String("db", "", "start servers on this database: sqlite, sqlite:PATH or postgres://...")
	mode := fs.String("engine", "batch", "engine of the started server: batch or naive")
	clients := fs.Int("clients", 64, "concurrent clients")
	duration := fs.Duration("duration", 10*time.Second, "how long each run lasts")
	requests := fs.Int("requests", 0, "stop after this many requests (flash-sale: the buyers; default 10 x capacity)")
	capacity := fs.Int("capacity", 100, "flash-sale: units on sale")
	rooms := fs.Int("rooms", 1000, "hotel: room types")
	warmup := fs.Duration("warmup", 2*time.Second, "run the load this long before measuring (not with --requests)")
	rate := fs.Float64("rate", 0, "pace all clients together to this many requests per second (0: as fast as answered)")
	compare := fs.Bool("compare", false, "with --db: also measure the naive engine, the HTTP ceiling and pgbench")
	out := fs.String("out", "bench-results", "directory for the JSON report, the SVG chart and CPU profiles")
	keep := fs.Bool("keep", false, "keep the benchmark databases")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "allot bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if (*target == "") == (*db == "") {
		fmt.Fprintln(stderr, "allot bench: give exactly one of --target URL or --db URL")
		return 2
	}
	if *mode != "batch" && *mode != "naive" {
		fmt.Fprintf(stderr, "allot bench: --engine must be batch or naive, not %q\n", *mode)
		return 2
	}
	engineGiven := false
	fs.Visit(func(f *flag.Flag) { engineGiven = engineGiven || f.Name == "engine" })
	if *target != "" && (engineGiven || *keep) {
		fmt.Fprintln(stderr, "allot bench: --engine and --keep are for the servers --db starts; a --target server runs as it was started")
		return 2
	}
	switch *workload {
	case "hot", "flash-sale", "hotel", "mixed", "health":
	default:
		fmt.Fprintf(stderr, "allot bench: --workload must be hot, flash-sale, hotel, mixed or health, not %q\n", *workload)
		return 2
	}
	if *compare && *db == "" {
		fmt.Fprintln(stderr, "allot bench: --compare needs --db (it starts its own servers)")
		return 2
	}
	if *clients < 1 || *duration <= 0 || *capacity < 1 || *rooms < 1 || *requests < 0 || *rate < 0 || *warmup < 0 {
		fmt.Fprintln(stderr, "allot bench: --clients, --capacity and --rooms must be at least 1, --duration positive, --rate, --requests and --warmup not negative")
		return 2
	}
	if *workload == "flash-sale" && *requests == 0 {
		*requests = 10 * *capacity
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(stderr, "allot bench:", err)
		return 1
	}
	ctx, stop := signalContext()
	defer stop()
	stamp := time.Now().UTC().Format("20060102-150405")
	cfg := bench.Config{Workload: *workload, Clients: *clients, Duration: *duration, Requests: *requests,
		Capacity: *capacity, Rooms: *rooms, Rate: *rate, Warmup: *warmup, Prefix: "b" + stamp + "-", Progress: stderr}
	file := benchFile{Date: time.Now().UTC().Format(time.RFC3339), Command: "allot bench " + strings.Join(args, " "),
		Machine:  fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version()),
		Workload: *workload, DB: redact(*db), Passed: true}

	if *target != "" {
		cfg.Target = strings.TrimSuffix(*target, "/")
		r, err := bench.Run(ctx, cfg)
		if err != nil {
			fmt.Fprintln(stderr, "allot bench:", err)
			return 1
		}
		run := benchRun{Name: "target", Report: r}
		over, err := bench.Oversold(ctx, cfg.Target, r.Resources)
		if err != nil {
			fmt.Fprintln(stderr, "allot bench: checking for overselling:", err)
			return 1
		}
		run.Audit = &engine.Audit{Oversold: over}
		run.Note = "oversold checked through the availability API"
		file.Runs = append(file.Runs, run)
	} else {
		modes := []string{*mode}
		if *compare {
			modes = []string{"batch", "naive"}
		}
		for _, m := range modes {
			run, health, err := benchServer(ctx, stderr, cfg, *db, m, *out, stamp, *compare && m == "batch", *keep)
			if err != nil {
				fmt.Fprintln(stderr, "allot bench:", err)
				return 1
			}
			file.Runs = append(file.Runs, run)
			if health != nil {
				file.Runs = append(file.Runs, *health)
			}
		}
		if *compare && strings.HasPrefix(*db, "postgres") {
			file.Runs = append(file.Runs, pgbenchRun(ctx, stderr, *db, *workload, *clients, *duration))
		}
	}
	file.Ratios = ratios(file.Runs)
	for _, r := range file.Runs {
		if r.Audit != nil && (r.Audit.Oversold != 0 || len(r.Audit.Violations) > 0) {
			file.Passed = false
		}
		if r.Report != nil && r.Report.Workload == "flash-sale" && r.Report.Won != int64(min(r.Report.Capacity, *requests)) {
			file.Passed = false
		}
	}
	printSummary(stderr, file)
	base := filepath.Join(*out, *workload+"-"+stamp)
	j, _ := json.MarshalIndent(file, "", "  ")
	var charted []*bench.Report
	var names []string
	for _, r := range file.Runs {
		if r.Report != nil {
			charted, names = append(charted, r.Report), append(names, r.Name)
		}
	}
	werr := errors.Join(os.WriteFile(base+".json", append(j, '\n'), 0o644),
		os.WriteFile(base+".svg", bench.Chart(fmt.Sprintf("allot bench %s, %d clients", *workload, *clients), charted, names), 0o644))
	if werr != nil {
		fmt.Fprintln(stderr, "allot bench:", werr)
		return 1
	}
	fmt.Fprintf(stderr, "report: %s.json  chart: %s.svg\n", base, base)
	if !file.Passed {
		fmt.Fprintln(stderr, "allot bench: INVARIANT CHECK FAILED")
		return 1
	}
	return 0
}

// freshDB returns a new database for one server: a new SQLite file, or a
// new schema on the PostgreSQL server (as search_path in the URL), with a
// function that drops it.
func freshDB(ctx context.Context, db, out, name string) (string, func(), error) {
	if db == "sqlite" || strings.HasPrefix(db, "sqlite:") {
		dir := out
		if p := strings.TrimPrefix(db, "sqlite:"); p != "sqlite" && p != "" {
			dir = filepath.Dir(p)
		}
		path, err := filepath.Abs(filepath.Join(dir, name+".db"))
		if err != nil {
			return "", nil, err
		}
		drop := func() {
			for _, suffix := range []string{"", "-wal", "-shm"} {
				os.Remove(path + suffix)
			}
		}
		drop()
		return "sqlite:" + path, drop, nil
	}
	u, err := url.Parse(db)
	if err != nil || !strings.HasPrefix(u.Scheme, "postgres") {
		return "", nil, fmt.Errorf("--db must be sqlite, sqlite:PATH or postgres://..., not %q", redact(db))
	}
	schema := strings.ReplaceAll(name, "-", "_")
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		return "", nil, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return "", nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), func() {
		c, err := pgx.Connect(context.Background(), db)
		if err == nil {
			c.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
			c.Close(context.Background())
		}
	}, nil
}

// benchServer starts 'allot serve' on a fresh database, runs the workload
// (and, if asked, the HTTP ceiling) against it, stops it, and audits the
// database.
func benchServer(ctx context.Context, stderr io.Writer, cfg bench.Config, db, mode, out, stamp string, health, keep bool) (benchRun, *benchRun, error) {
	run := benchRun{Name: mode + " engine"}
	dbURL, drop, err := freshDB(ctx, db, out, "allot-bench-"+mode+"-"+stamp)
	if err != nil {
		return run, nil, err
	}
	if !keep {
		defer drop()
	}
	exe, err := os.Executable()
	if err != nil {
		return run, nil, err
	}
	ln, err := freeAddrString()
	if err != nil {
		return run, nil, err
	}
	run.Profile = filepath.Join(out, fmt.Sprintf("cpu-%s-%s-%s.prof", cfg.Workload, mode, stamp))
	// The workflow is off: the bench measures the write path alone.
	srv := exec.Command(exe, "serve", "--addr", ln, "--db", dbURL, "--engine", mode, "--cpuprofile", run.Profile, "--log-level", "warn", "--workflow=false")
	srv.Env = append(os.Environ(), "ALLOT_RUN_MAIN=1")
	srv.Stderr = stderr
	if err := srv.Start(); err != nil {
		return run, nil, err
	}
	defer srv.Process.Kill()
	base := "http://" + ln
	if err := waitHealthy(base, 30*time.Second); err != nil {
		return run, nil, err
	}
	fmt.Fprintf(stderr, "%s engine on %s (%s)\n", mode, redact(dbURL), base)
	cfg.Target = base
	var before *engine.Stats
	var mu sync.Mutex
	cfg.Measuring = func() {
		st := serverStats(base)
		mu.Lock()
		before = st
		mu.Unlock()
	}
	if run.Report, err = bench.Run(ctx, cfg); err != nil {
		return run, nil, err
	}
	run.Report.Engine = mode
	mu.Lock()
	if after := serverStats(base); after != nil {
		run.Stats, _ = json.Marshal(statsSince(before, *after))
	}
	mu.Unlock()
	var hrun *benchRun
	if health {
		hcfg := cfg
		hcfg.Workload, hcfg.Requests, hcfg.Rate, hcfg.Measuring = "health", 0, 0, nil
		hr, err := bench.Run(ctx, hcfg)
		if err != nil {
			return run, nil, err
		}
		hrun = &benchRun{Name: "HTTP ceiling (GET /healthz)", Report: hr}
	}
	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		return run, nil, err
	}
	if err := srv.Wait(); err != nil {
		return run, nil, fmt.Errorf("server exited: %w", err)
	}
	store, err := openStore(ctx, dbURL)
	if err != nil {
		return run, nil, err
	}
	defer store.Close()
	a, err := engine.Check(ctx, store, run.Report.Resources...)
	if err != nil {
		return run, nil, err
	}
	if len(a.Violations) > 10 {
		a.Violations = a.Violations[:10]
	}
	run.Audit = &a
	return run, hrun, nil
}

// serverStats reads a server's write-path counters, or nil.
func serverStats(base string) *engine.Stats {
	res, err := nethttp.Get(base + "/v1/stats")
	if err != nil {
		return nil
	}
	defer res.Body.Close()
	var st engine.Stats
	if res.StatusCode != nethttp.StatusOK || json.NewDecoder(res.Body).Decode(&st) != nil {
		return nil
	}
	return &st
}

// statsSince is what the counters did between two snapshots: the measured
// part of a run, without its warm-up. The longest batch cannot be split:
// it stays the longest since the server started.
func statsSince(before *engine.Stats, after engine.Stats) engine.Stats {
	if before == nil {
		return after
	}
	d := engine.Stats{Batches: after.Batches - before.Batches, Ops: after.Ops - before.Ops,
		FailedBatches: after.FailedBatches - before.FailedBatches, JoinedOps: after.JoinedOps - before.JoinedOps,
		MaxBatchMs: after.MaxBatchMs, BatchesOverMs: map[string]int64{}}
	if d.Batches > 0 {
		d.MeanBatchSize = float64(d.Ops) / float64(d.Batches)
		d.MeanBatchMs = (after.MeanBatchMs*float64(after.Batches) - before.MeanBatchMs*float64(before.Batches)) / float64(d.Batches)
	}
	for k, v := range after.BatchesOverMs {
		d.BatchesOverMs[k] = v - before.BatchesOverMs[k]
	}
	return d
}

func freeAddrString() (string, error) {
	l, err := netListen()
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitHealthy(base string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		res, err := nethttp.Get(base + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server at %s did not become healthy: %v", base, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ratios(runs []benchRun) map[string]float64 {
	find := func(prefix string) float64 {
		for _, r := range runs {
			if strings.HasPrefix(r.Name, prefix) {
				if r.PgbenchT > 0 {
					return r.PgbenchT
				}
				if r.Report != nil {
					return r.Report.OKPS
				}
			}
		}
		return 0
	}
	out := map[string]float64{}
	b, n, h, p := find("batch"), find("naive"), find("HTTP ceiling"), find("pgbench")
	if b > 0 && n > 0 {
		out["batch_over_naive"] = b / n
	}
	if b > 0 && h > 0 {
		out["batch_over_http_ceiling"] = b / h
	}
	if b > 0 && p > 0 {
		out["batch_over_pgbench"] = b / p
	}
	return out
}

func printSummary(w io.Writer, f benchFile) {
	fmt.Fprintf(w, "\n%s, %s\n", f.Command, f.Machine)
	fmt.Fprintf(w, "%-30s %12s %12s %9s %9s %9s %9s %9s\n", "run", "ok/s", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "oversold")
	for _, r := range f.Runs {
		if r.Report == nil {
			fmt.Fprintf(w, "%-30s %12.0f %12s   %s\n", r.Name, r.PgbenchT, "(tps)", r.Note)
			continue
		}
		over := "-"
		if r.Audit != nil {
			over = fmt.Sprint(r.Audit.Oversold)
		}
		l := r.Report.Latency
		fmt.Fprintf(w, "%-30s %12.0f %12.0f %9.2f %9.2f %9.2f %9.2f %9s\n", r.Name, r.Report.OKPS, r.Report.RequestsPS, l.P50, l.P90, l.P99, l.Max, over)
		if r.Report.Workload == "flash-sale" {
			fmt.Fprintf(w, "%-30s won %d of %d units (%d buyers)\n", "", r.Report.Won, r.Report.Capacity, r.Report.Requests)
		}
		if len(r.Stats) > 0 {
			fmt.Fprintf(w, "%-30s server: %s\n", "", bytes.TrimSpace(r.Stats))
		}
		if r.Report.Errors > 0 {
			fmt.Fprintf(w, "%-30s %d errors, first: %v\n", "", r.Report.Errors, r.Report.FirstErrors)
		}
		if r.Audit != nil && len(r.Audit.Violations) > 0 {
			fmt.Fprintf(w, "%-30s VIOLATIONS: %v\n", "", r.Audit.Violations)
		}
	}
	for k, v := range f.Ratios {
		fmt.Fprintf(w, "ratio %-28s %.2f\n", k, v)
	}
}
