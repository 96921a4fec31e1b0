// Command allot is the Allot booking engine: one binary that serves the API
// and migrates its database.
//
//	allot serve   [--addr 127.0.0.1:8080] [--db sqlite:allot-data/allot.db | postgres://...]
//	allot migrate [--db ...]
//
// ALLOT_ADDR, ALLOT_DB and ALLOT_LOG_LEVEL set the same as the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/events"
	allothttp "github.com/allot/allot/http"
	"github.com/allot/allot/openactive"
	"github.com/allot/allot/store/postgres"
	"github.com/allot/allot/store/sqlite"
	"github.com/allot/allot/webhook"
	"github.com/allot/allot/workflow"
)

const defaultDB = "sqlite:allot-data/allot.db"

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

const usage = `allot: a booking engine that sells every unit of capacity at most once.

Usage:
  allot serve   [--addr HOST:PORT] [--db URL]   serve the API (migrates first)
  allot migrate [--db URL]                      migrate the database and exit
  allot bench   [flags]                         load-test a server; allot bench -h
  allot fake-provider [--addr] [--callback URL --secret S]
                                                a stand-in webhook-style payment provider

--db is sqlite:PATH (default sqlite:allot-data/allot.db, nothing to install)
or postgres://user@host:port/db (several allot processes may share it).
serve also takes --engine batch|naive, --batch-workers, --batch-max,
--batch-linger, --cpuprofile FILE, and publishes events with --nats-url URL
(--nats-stream, --nats-subject) and --kafka-brokers HOST:PORT,...; with
--kafka-consume-create-booking GROUP and --workflow=false it also confirms the
bookings it reads from create_booking (seed 000's seller proxy).
The booking workflow (payment, seller, notification) is on by default with
the built-in fake payment provider, auto-confirming sellers and notifications
in the log; see allot serve -h for --payment-*, --seller-*, --smtp-* and
--notify-file, or --workflow=false to reserve orders at once. --openactive serves
the OpenActive Open Booking API for slot resources (--openactive-partner NAME=KEY).
Environment: ALLOT_ADDR, ALLOT_DB, ALLOT_ENGINE, ALLOT_LOG_LEVEL (debug|info|warn|error),
ALLOT_NATS_URL, ALLOT_NATS_STREAM, ALLOT_NATS_SUBJECT, ALLOT_KAFKA_BROKERS,
ALLOT_KAFKA_CONSUME_CREATE_BOOKING.
`

func run(args []string, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("allot "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", env("ALLOT_ADDR", "127.0.0.1:8080"), "listen address (ALLOT_ADDR)")
	db := fs.String("db", env("ALLOT_DB", defaultDB), "database URL: sqlite:PATH or postgres://... (ALLOT_DB)")
	level := fs.String("log-level", env("ALLOT_LOG_LEVEL", "info"), "log level: debug, info, warn, error (ALLOT_LOG_LEVEL)")
	mode := fs.String("engine", env("ALLOT_ENGINE", "batch"), "write path: batch (group concurrent writes) or naive (one transaction per request) (ALLOT_ENGINE)")
	workers := fs.Int("batch-workers", 0, "batches that may run at once (default 1 on SQLite, 4 on PostgreSQL)")
	maxBatch := fs.Int("batch-max", defaultBatchMax, "most requests in one batch")
	linger := fs.Duration("batch-linger", 0, "how long a batch may wait for company (0: never wait)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the server to this file until it stops")
	natsURL := fs.String("nats-url", env("ALLOT_NATS_URL", ""), "publish events to NATS JetStream at this URL (ALLOT_NATS_URL)")
	natsStream := fs.String("nats-stream", env("ALLOT_NATS_STREAM", "ALLOT"), "JetStream stream for the events (ALLOT_NATS_STREAM)")
	natsSubject := fs.String("nats-subject", env("ALLOT_NATS_SUBJECT", "allot.events"), "subject prefix: <prefix>.<event type> (ALLOT_NATS_SUBJECT)")
	publicURL := fs.String("public-url", env("ALLOT_PUBLIC_URL", ""), "the URL clients reach this server at, such as https://book.example.com: the base of the feeds' links (default: each request's Host) and of OpenActive @ids (ALLOT_PUBLIC_URL)")
	kafkaBrokers := fs.String("kafka-brokers", env("ALLOT_KAFKA_BROKERS", ""), "publish events to Kafka at these comma-separated brokers (ALLOT_KAFKA_BROKERS)")
	wf := workflowFlags(fs)
	oa := openActiveFlags(fs)
	consumeGroup := fs.String("kafka-consume-create-booking", env("ALLOT_KAFKA_CONSUME_CREATE_BOOKING", ""), "act as seed 000's seller proxy: consume create_booking from --kafka-brokers in this consumer group and confirm the bookings (ALLOT_KAFKA_CONSUME_CREATE_BOOKING)")
	if cmd == "bench" {
		return runBench(args, stderr)
	}
	if cmd == "fake-provider" {
		return runFakeProvider(args, stderr)
	}
	if cmd != "serve" && cmd != "migrate" {
		fmt.Fprintf(stderr, "allot: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "allot %s: unexpected arguments %q\n", cmd, fs.Args())
		return 2
	}
	if _, _, err := net.SplitHostPort(*addr); err != nil && cmd == "serve" {
		fmt.Fprintf(stderr, "allot: --addr %q must be HOST:PORT (127.0.0.1:8080, :8080): %v\n", *addr, err)
		return 2
	}
	if err := checkEnvBools(); err != nil {
		fmt.Fprintf(stderr, "allot: %v\n", err)
		return 2
	}
	batching, err := batchingFor(*mode, *db, *workers, *maxBatch, *linger)
	if err != nil {
		fmt.Fprintf(stderr, "allot: %v\n", err)
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "allot: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lv}))
	slog.SetDefault(log)
	if *consumeGroup != "" && *kafkaBrokers == "" {
		fmt.Fprintln(stderr, "allot: --kafka-consume-create-booking needs --kafka-brokers")
		return 2
	}
	if *consumeGroup != "" && *wf.on {
		// Both would confirm orders: the consumer could confirm one before
		// the workflow's seller step asked the real seller.
		fmt.Fprintln(stderr, "allot: --kafka-consume-create-booking confirms bookings as the seller, which the workflow's seller step does: add --workflow=false")
		return 2
	}
	flow, err := wf.build(log)
	if err != nil {
		fmt.Fprintf(stderr, "allot: %v\n", err)
		return 2
	}

	var oaCfg *openactive.Config
	owner := map[string]string{} // key -> partner
	for name, key := range oa.partners {
		if !openactive.ValidPartner(name) {
			fmt.Fprintf(stderr, "allot: --openactive-partner %q: a partner's name is 1-64 letters, digits or '-'\n", name)
			return 2
		}
		if other, dup := owner[key]; dup {
			// Which one a request is would depend on map order.
			fmt.Fprintf(stderr, "allot: --openactive-partner: %q and %q have the same key; each partner needs its own\n", min(name, other), max(name, other))
			return 2
		}
		owner[key] = name
	}
	if u, err := url.Parse(*publicURL); *publicURL != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.RawQuery != "" || u.User != nil) {
		fmt.Fprintf(stderr, "allot: --public-url %q must be an http(s) URL without a query\n", *publicURL)
		return 2
	}
	baseURLGiven := false
	fs.Visit(func(f *flag.Flag) { baseURLGiven = baseURLGiven || f.Name == "openactive-base-url" })
	if !*oa.on && !*oa.testInterface && (len(oa.partners) > 0 || baseURLGiven) {
		fmt.Fprintln(stderr, "allot: --openactive-partner and --openactive-base-url are for --openactive; add it")
		return 2
	}
	if *oa.on || *oa.testInterface {
		base := *oa.baseURL
		if base == "" && *publicURL != "" {
			base = strings.TrimSuffix(*publicURL, "/")
		} else if base == "" {
			base = "http://" + *addr
		} else if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
			fmt.Fprintf(stderr, "allot: --openactive-base-url %q must be an http(s) URL without a query\n", base)
			return 2
		}
		oaCfg = &openactive.Config{BaseURL: base, Partners: owner, TestInterface: *oa.testInterface}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	store, err := openStore(ctx, *db)
	if err != nil {
		log.Error("opening the database", "db", redact(*db), "err", err)
		return 1
	}
	defer store.Close()
	log.Info("database ready, schema migrated", "db", redact(*db))
	if cmd == "migrate" {
		return 0
	}
	if p, ok := serveGCPercent(os.Getenv("GOGC")); ok {
		debug.SetGCPercent(p)
		log.Info("garbage collector target set", "gc_percent", p)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Error("creating the CPU profile", "err", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Error("starting the CPU profile", "err", err)
			return 1
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	sinks, err := openSinks(ctx, log, *natsURL, *natsStream, *natsSubject, *kafkaBrokers)
	if err != nil {
		log.Error("connecting the event publishers", "err", err)
		return 1
	}
	defer func() {
		for _, s := range sinks {
			s.Close()
		}
	}()
	consume := consumer{brokers: *kafkaBrokers, group: *consumeGroup}
	if err := serve(ctx, log, store, *addr, *publicURL, batching, sinks, consume, flow, oaCfg); err != nil {
		log.Error("serving", "err", err)
		return 1
	}
	return 0
}

// defaultGCPercent is the server's garbage-collection target when GOGC is
// not set. Go's default, 100, collects each time the small live heap
// doubles: under the hot load the server's CPU per hold fell by a fifth
// (SQLite) to a quarter (PostgreSQL) at 400, for about 15 MB more memory
// (docs/benchmarks.md, section 9). GOGC, and GOMEMLIMIT, still rule.
const defaultGCPercent = 400

// serveGCPercent is the GC target serve sets, and whether it sets one: not
// when the operator chose one with GOGC.
func serveGCPercent(gogc string) (int, bool) {
	if gogc != "" {
		return 0, false
	}
	return defaultGCPercent, true
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// defaultBatchMax is --batch-max's default.
const defaultBatchMax = 256

// envBool is a boolean environment variable (true, 1, TRUE, false, 0, ...)
// or def; checkEnvBools refuses one that is neither.
func envBool(name string, def bool) bool {
	if b, err := strconv.ParseBool(os.Getenv(name)); err == nil {
		return b
	}
	return def
}

// boolEnvs are the environment variables envBool reads.
var boolEnvs = []string{"ALLOT_WORKFLOW", "ALLOT_OPENACTIVE"}

func checkEnvBools() error {
	for _, name := range boolEnvs {
		if v := os.Getenv(name); v != "" {
			if _, err := strconv.ParseBool(v); err != nil {
				return fmt.Errorf("%s=%q is not a boolean (true, false, 1, 0)", name, v)
			}
		}
	}
	return nil
}

// openStore opens the store a database URL names.
func openStore(ctx context.Context, url string) (allot.Store, error) {
	switch {
	case strings.HasPrefix(url, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(url, "sqlite:"), "//")
		if path == "" {
			return nil, errors.New("sqlite: URL names no file; use sqlite:PATH")
		}
		return sqlite.Open(ctx, path)
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return postgres.Open(ctx, url, postgres.Options{})
	}
	return nil, fmt.Errorf("unsupported database URL %q: use sqlite:PATH or postgres://...", redact(url))
}

// batchingFor turns the engine flags into the engine's batching.
func batchingFor(mode, db string, workers, maxBatch int, linger time.Duration) (engine.Batching, error) {
	switch mode {
	case "naive":
		if workers != 0 || maxBatch != defaultBatchMax || linger != 0 {
			return engine.Batching{}, fmt.Errorf("--batch-workers, --batch-max and --batch-linger are for --engine batch; the naive engine has no batches")
		}
		return engine.Batching{}, nil
	case "batch":
	default:
		return engine.Batching{}, fmt.Errorf("--engine must be batch or naive, not %q", mode)
	}
	if workers < 0 || workers > 64 || maxBatch < 1 || maxBatch > 10000 || linger < 0 || linger > time.Second {
		return engine.Batching{}, fmt.Errorf("--batch-workers must be within 0..64, --batch-max within 1..10000 and --batch-linger within 0..1s")
	}
	if workers == 0 {
		// SQLite has one writer: one batch at a time is all it can use.
		workers = 1
		if strings.HasPrefix(db, "postgres") {
			workers = 4
		}
	}
	return engine.Batching{Workers: workers, MaxSize: maxBatch, Linger: linger}, nil
}

// redact hides a password in a database URL before it is logged.
func redact(url string) string {
	if at := strings.LastIndex(url, "@"); at > 0 {
		if scheme := strings.Index(url, "://"); scheme > 0 {
			if colon := strings.Index(url[scheme+3:at], ":"); colon >= 0 {
				return url[:scheme+3+colon+1] + "xxxxx" + url[at:]
			}
		}
	}
	return url
}

// serve runs the API until ctx ends, then drains in-flight requests: each
// one either commits and is answered, or did not happen.
// openSinks connects the configured event publishers.
func openSinks(ctx context.Context, log *slog.Logger, natsURL, stream, subject, kafkaBrokers string) ([]events.Sink, error) {
	var sinks []events.Sink
	if natsURL != "" {
		n, err := events.NewNATS(ctx, events.NATSConfig{URL: natsURL, Stream: stream, Subject: subject})
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, n)
	}
	if kafkaBrokers != "" {
		k, err := events.NewKafka(strings.Split(kafkaBrokers, ","), kgo.WithLogger(events.KafkaLogger(log)))
		if err != nil {
			for _, s := range sinks {
				s.Close()
			}
			return nil, err
		}
		sinks = append(sinks, k)
	}
	return sinks, nil
}

// consumer configures the create_booking consumer; no group, no consumer.
type consumer struct{ brokers, group string }

func serve(ctx context.Context, log *slog.Logger, store allot.Store, addr, publicURL string, b engine.Batching, sinks []events.Sink, consume consumer, flow *flowConfig, oa *openactive.Config) error {
	opts := engine.Options{Logger: log, Batching: b}
	var runner *workflow.Runner
	if flow != nil {
		var err error
		if runner, err = workflow.New(ctx, store, flow.runner); err != nil {
			return err
		}
		opts.Workflow = flow.engine
		opts.Workflow.Scheduler = runner
	}
	eng := engine.New(store, opts)
	defer eng.Close()
	api := allothttp.New(eng, log)
	api.SetPublicURL(publicURL)
	if runner != nil {
		flow.api.Runner = runner
		api.SetWorkflow(flow.api)
		if flow.fake != nil {
			// The built-in fake settles "pending" charges by calling back
			// in-process, as a webhook-style provider would over HTTP.
			flow.fake.OnPending = func(r allot.PaymentRequest, res allot.PaymentResult) {
				if _, err := runner.ChargeResult(context.Background(), r.OrderID, "fake", res); err != nil {
					log.Warn("fake provider callback", "order_id", r.OrderID, "err", err)
				}
			}
		}
		if err := runner.Start(context.WithoutCancel(ctx), eng); err != nil {
			return err
		}
		// After the HTTP drain (deferred later, so run earlier): let running
		// steps finish; River re-runs any cut short after RescueAfter.
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := runner.Stop(sctx); err != nil {
				log.Warn("stopping the workflow", "err", err)
			}
		}()
	}
	var handler nethttp.Handler = api
	if oa != nil {
		mux := nethttp.NewServeMux()
		oah := openactive.New(eng, *oa, log)
		for _, p := range openactive.Routes {
			mux.Handle(p, oah)
		}
		mux.Handle("/", api)
		handler = mux
	}
	srv := &nethttp.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(api.CloseStreams)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	var background sync.WaitGroup
	// Stop the background loops, and wait for them, before the engine and
	// the store close under them.
	defer func() { stopSweep(); background.Wait() }()
	if runner == nil {
		// With the workflow, the sweep is River's periodic job (on the
		// leader only).
		background.Go(func() { eng.RunSweeper(sweepCtx, time.Second) })
	}
	background.Go(func() { eng.RunSequencer(sweepCtx, 200*time.Millisecond) })
	background.Go(func() { webhook.New(store, webhook.Config{}, log).Run(sweepCtx, 500*time.Millisecond) })
	if consume.group != "" {
		c, err := events.NewKafkaConsumer(strings.Split(consume.brokers, ","), consume.group, events.TopicCreateBooking, log)
		if err != nil {
			return err
		}
		background.Go(func() { c.Run(sweepCtx, events.ConfirmBookings(eng, log)) })
		log.Info("consuming create_booking", "group", consume.group)
	}
	for _, sink := range sinks {
		relay := events.NewRelay(store, sink, log)
		background.Go(func() { relay.Run(sweepCtx) })
		log.Info("publishing events", "sink", sink.Name())
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("allot serving", "addr", ln.Addr().String(), "batch_workers", b.Workers, "batch_max", b.MaxSize, "batch_linger", b.Linger)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight requests")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("draining: %w", err)
	}
	log.Info("stopped")
	return nil
}
