// Package workflow runs the booking workflow's steps as durable River jobs:
// the engine schedules a step in the same transaction as the status change
// that calls for it, a worker performs the step's external effect (keyed, so
// a retry never has it twice) and applies the outcome as the next status
// change, which schedules the step after it. Steps are retried with
// exponential backoff a bounded number of times; one that exhausts them, or
// fails permanently, stays as a dead letter an operator can retry.
package workflow

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

// Config configures a Runner.
type Config struct {
	// Payments are the payment providers by name.
	Payments map[string]allot.Payments
	Sellers  allot.Sellers
	Notifier allot.Notifier
	Logger   *slog.Logger
	// MaxAttempts bounds a step's tries (default 10).
	MaxAttempts int
	// Backoff is the wait before retry n (n >= 1): by default 1s doubling
	// to at most 10 minutes.
	Backoff func(attempt int) time.Duration
	// StepTimeout bounds one try of a step (default 30s).
	StepTimeout time.Duration
	// RescueAfter is when a step whose worker died (a crash) is run again
	// (default 1 minute; it must exceed StepTimeout).
	RescueAfter time.Duration
	// SweepEvery is the period of the sweep job: expired holds, orders
	// waiting too long for payment or the seller (default 1s).
	SweepEvery time.Duration
	// PollEvery is how often idle workers look for due steps (default
	// 100ms; PostgreSQL is also woken by LISTEN/NOTIFY).
	PollEvery time.Duration
	// Workers is the number of steps run at once (default 20).
	Workers int
	// RefundPoll is how long a refund the provider answered "pending"
	// waits before the step asks again, under the same key (default 30s).
	RefundPoll time.Duration
}

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.Backoff == nil {
		c.Backoff = func(n int) time.Duration {
			return min(time.Second<<min(n-1, 20), 10*time.Minute)
		}
	}
	if c.StepTimeout <= 0 {
		c.StepTimeout = 30 * time.Second
	}
	if c.RescueAfter <= 0 {
		c.RescueAfter = time.Minute
	}
	if c.SweepEvery <= 0 {
		c.SweepEvery = time.Second
	}
	if c.PollEvery <= 0 {
		c.PollEvery = 100 * time.Millisecond
	}
	if c.Workers <= 0 {
		c.Workers = 20
	}
	if c.RefundPoll <= 0 {
		c.RefundPoll = 30 * time.Second
	}
}

// queue is River's client, whatever its driver's transaction type.
type queue interface {
	insertTx(ctx context.Context, tx allot.Tx, ps []river.InsertManyParams) error
	insert(ctx context.Context, ps []river.InsertManyParams) error
	list(ctx context.Context, p *river.JobListParams) (*river.JobListResult, error)
	get(ctx context.Context, id int64) (*rivertype.JobRow, error)
	retry(ctx context.Context, id int64) (*rivertype.JobRow, error)
	start(ctx context.Context) error
	stop(ctx context.Context) error
}

type riverQueue[TTx any] struct {
	c      *river.Client[TTx]
	unwrap func(allot.Tx) (TTx, bool)
}

func (q riverQueue[TTx]) insertTx(ctx context.Context, tx allot.Tx, ps []river.InsertManyParams) error {
	t, ok := q.unwrap(tx)
	if !ok {
		return fmt.Errorf("workflow: cannot enqueue in a %T", tx)
	}
	_, err := q.c.InsertManyTx(ctx, t, ps)
	return err
}
func (q riverQueue[TTx]) insert(ctx context.Context, ps []river.InsertManyParams) error {
	_, err := q.c.InsertMany(ctx, ps)
	return err
}
func (q riverQueue[TTx]) list(ctx context.Context, p *river.JobListParams) (*river.JobListResult, error) {
	return q.c.JobList(ctx, p)
}
func (q riverQueue[TTx]) get(ctx context.Context, id int64) (*rivertype.JobRow, error) {
	return q.c.JobGet(ctx, id)
}
func (q riverQueue[TTx]) retry(ctx context.Context, id int64) (*rivertype.JobRow, error) {
	return q.c.JobRetry(ctx, id)
}
func (q riverQueue[TTx]) start(ctx context.Context) error { return q.c.Start(ctx) }
func (q riverQueue[TTx]) stop(ctx context.Context) error  { return q.c.Stop(ctx) }

// Runner schedules and runs the workflow's steps. It is the engine's
// Scheduler; Start gives it the engine whose orders it moves.
type Runner struct {
	cfg Config
	q   queue
	eng *engine.Engine
	log *slog.Logger
}

var _ engine.Scheduler = (*Runner)(nil)

// New returns a Runner on the store's database: the embedded SQLite file
// (the store's single writer connection, which River shares, since SQLite
// has one writer at a time) or PostgreSQL (the store's pool). It applies
// River's migrations.
func New(ctx context.Context, s allot.Store, cfg Config) (*Runner, error) {
	cfg.defaults()
	r := &Runner{cfg: cfg, log: cfg.Logger}
	workers := river.NewWorkers()
	river.AddWorker(workers, &chargeWorker{r: r})
	river.AddWorker(workers, &refundWorker{r: r})
	river.AddWorker(workers, &sellerWorker{r: r})
	river.AddWorker(workers, &notifyWorker{r: r})
	river.AddWorker(workers, &sweepWorker{r: r})
	river.AddWorker(workers, &paymentTimeoutWorker{r: r})
	river.AddWorker(workers, &sellerTimeoutWorker{r: r})
	rc := &river.Config{
		Queues:                      map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: cfg.Workers}},
		Workers:                     workers,
		MaxAttempts:                 cfg.MaxAttempts,
		RetryPolicy:                 backoff{cfg.Backoff},
		JobTimeout:                  cfg.StepTimeout,
		RescueStuckJobsAfter:        cfg.RescueAfter,
		FetchPollInterval:           cfg.PollEvery,
		FetchCooldown:               min(cfg.PollEvery, 100*time.Millisecond),
		DiscardedJobRetentionPeriod: 30 * 24 * time.Hour,
		CancelledJobRetentionPeriod: 30 * 24 * time.Hour,
		Logger:                      cfg.Logger.With("component", "river"),
		PeriodicJobs: []*river.PeriodicJob{river.NewPeriodicJob(river.PeriodicInterval(cfg.SweepEvery),
			func() (river.JobArgs, *river.InsertOpts) { return sweepArgs{}, nil },
			&river.PeriodicJobOpts{RunOnStart: true, ID: "sweep"})},
	}
	switch st := s.(type) {
	case interface{ DB() *sql.DB }:
		d := riversqlite.New(st.DB())
		if err := migrate[*sql.Tx](ctx, d); err != nil {
			return nil, err
		}
		c, err := river.NewClient(d, rc)
		if err != nil {
			return nil, fmt.Errorf("workflow: %w", err)
		}
		r.q = riverQueue[*sql.Tx]{c: c, unwrap: func(tx allot.Tx) (*sql.Tx, bool) {
			t, ok := tx.(interface{ SQLTx() *sql.Tx })
			if !ok {
				return nil, false
			}
			return t.SQLTx(), true
		}}
	case interface{ Pool() *pgxpool.Pool }:
		d := riverpgxv5.New(st.Pool())
		if err := migratePostgres(ctx, st.Pool(), d); err != nil {
			return nil, err
		}
		c, err := river.NewClient(d, rc)
		if err != nil {
			return nil, fmt.Errorf("workflow: %w", err)
		}
		r.q = riverQueue[pgx.Tx]{c: c, unwrap: func(tx allot.Tx) (pgx.Tx, bool) {
			t, ok := tx.(interface{ PgxTx() pgx.Tx })
			if !ok {
				return nil, false
			}
			return t.PgxTx(), true
		}}
	default:
		return nil, fmt.Errorf("workflow: no job queue for a %T store", s)
	}
	return r, nil
}

func migrate[TTx any](ctx context.Context, d riverdriver.Driver[TTx]) error {
	m, err := rivermigrate.New[TTx](d, nil)
	if err != nil {
		return fmt.Errorf("workflow: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("workflow: migrating River's tables: %w", err)
	}
	return nil
}

// migratePostgres runs River's migrations under a session advisory lock
// for the schema. River's Migrate applies each version in a transaction of
// its own and takes no lock: nodes starting together on a fresh database
// each created its tables, and all but one failed. Not one transaction
// (MigrateTx): some of River's versions cannot share one. The lock is held
// on a connection of its own, outside the pool, which River's migration
// may need whole (a pool of one connection waited for itself); closing that
// connection is what releases the lock, whatever happened meanwhile.
func migratePostgres(ctx context.Context, pool *pgxpool.Pool, d riverdriver.Driver[pgx.Tx]) error {
	conn, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("workflow: locking River's migrations: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext('allot-river-migrate:' || current_schema()))`); err != nil {
		return fmt.Errorf("workflow: locking River's migrations: %w", err)
	}
	return migrate(ctx, d)
}

// Start runs the workers, which move e's orders.
func (r *Runner) Start(ctx context.Context, e *engine.Engine) error {
	r.eng = e
	return r.q.start(ctx)
}

// Stop lets running steps finish (up to ctx) and stops.
func (r *Runner) Stop(ctx context.Context) error { return r.q.stop(ctx) }

// Schedule enqueues steps inside tx: the engine calls it in the
// transaction of the change that calls for them.
func (r *Runner) Schedule(ctx context.Context, tx allot.Tx, steps []allot.Step) error {
	ps, err := params(steps)
	if err != nil {
		return err
	}
	return r.q.insertTx(ctx, tx, ps)
}

func params(steps []allot.Step) ([]river.InsertManyParams, error) {
	ps := make([]river.InsertManyParams, len(steps))
	for i, s := range steps {
		a := stepArgs{OrderID: s.OrderID, Cause: s.Cause}
		switch s.Kind {
		case allot.StepCharge:
			ps[i].Args = chargeArgs(a)
		case allot.StepRefund:
			ps[i].Args = refundArgs(a)
		case allot.StepSeller:
			ps[i].Args = sellerArgs(a)
		case allot.StepNotify:
			ps[i].Args = notifyArgs(a)
		case allot.StepPaymentTimeout:
			ps[i].Args = paymentTimeoutArgs(a)
		case allot.StepSellerTimeout:
			ps[i].Args = sellerTimeoutArgs(a)
		default:
			return nil, fmt.Errorf("workflow: unknown step %q", s.Kind)
		}
		if s.After > 0 {
			ps[i].InsertOpts = &river.InsertOpts{ScheduledAt: time.Now().Add(s.After)}
		}
	}
	return ps, nil
}

type backoff struct{ f func(int) time.Duration }

func (b backoff) NextRetry(j *rivertype.JobRow) time.Time {
	return time.Now().Add(b.f(max(1, j.Attempt)))
}

// permanent makes err end the step now (River cancels it: a dead letter).
func permanent(err error) error { return river.JobCancel(err) }

// isPermanent reports an error that retrying cannot fix.
func isPermanent(err error) bool { return errors.Is(err, allot.ErrPermanent) }

func trim(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
