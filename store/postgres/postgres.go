// Package postgres is Allot's production store on PostgreSQL, through pgx.
//
// Several allot processes may share one database: every bucket a write
// touches is locked with SELECT ... FOR UPDATE in BucketKey order (so lock
// waits never form a cycle), the decision is taken on the locked rows, and a
// CHECK constraint refuses any row with held + booked > capacity. Statements
// touching many rows are single round trips over unnest'ed arrays.
package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/allot/allot"
	"github.com/allot/allot/store/internal/rowcodec"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is the PostgreSQL store.
type Store struct {
	q
	pool *pgxpool.Pool
	// customPlans: the statements on buckets plan each execution (see
	// tx.customPlan), unless the URL sets plan_cache_mode as a parameter.
	customPlans bool
}

var _ allot.Store = (*Store)(nil)

// Options tune Open.
type Options struct {
	// Schema, when set, is created if missing and used as the search_path:
	// tests give each test its own.
	Schema string
	// MaxConns bounds the pool; pgxpool's default when zero.
	MaxConns int32

	// migrateUpTo, in tests, stops migrating after the named migration, to
	// build a database as an older version left it.
	migrateUpTo string
}

// Open connects to url and migrates the schema.
func Open(ctx context.Context, url string, o Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	_, planModeSet := cfg.ConnConfig.RuntimeParams["plan_cache_mode"]
	if o.Schema != "" {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		_, err = conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{o.Schema}.Sanitize())
		conn.Close(ctx)
		if err != nil {
			return nil, fmt.Errorf("postgres: creating schema: %w", err)
		}
		cfg.ConnConfig.RuntimeParams["search_path"] = o.Schema
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s := &Store{q: q{db: pool}, pool: pool, customPlans: !planModeSet}
	if err := s.migrate(ctx, o.Schema, o.migrateUpTo); err != nil {
		pool.Close()
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "3F000" { // invalid_schema_name
			return nil, fmt.Errorf("postgres: no schema to create Allot's tables in: the connection's search_path names none that exists (create it with CREATE SCHEMA, or drop search_path from the URL): %w", err)
		}
		return nil, err
	}
	return s, nil
}

// Close closes the pool.
func (s *Store) Close() error { s.pool.Close(); return nil }

// migrate applies the embedded migrations not yet applied, in one
// transaction under an advisory lock, so that nodes starting together
// migrate once.
func (s *Store) migrate(ctx context.Context, schema, upTo string) error {
	names, err := migrations.ReadDir("migrations")
	if err != nil {
		return err
	}
	h := fnv.New64a()
	h.Write([]byte("allot-migrate:" + schema))
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(h.Sum64())); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		for _, n := range names {
			if upTo != "" && n.Name() > upTo {
				break
			}
			var one int
			err := tx.QueryRow(ctx, `SELECT 1 FROM schema_migrations WHERE version = $1`, n.Name()).Scan(&one)
			if err == nil {
				continue
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			b, err := migrations.ReadFile("migrations/" + n.Name())
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, string(b)); err != nil {
				return fmt.Errorf("postgres: migration %s: %w", n.Name(), err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, n.Name()); err != nil {
				return err
			}
		}
		return nil
	})
}

// Write runs fn in one READ COMMITTED transaction; rows locked FOR UPDATE
// are re-read at their latest committed version, which is what the engine
// decides on. BEGIN travels with the first statement and COMMIT with the
// last writes, so a batch costs no round trip of its own for either.
//
// If the connection breaks once COMMIT may have been sent, Write asks the
// server, on another connection, whether the transaction committed
// (resolveCommit): a commit whose answer was lost is still a success, and
// only a transaction known to have rolled back is reported as failed.
func (s *Store) Write(ctx context.Context, fn func(allot.Tx) error) error {
	t, err := s.write(ctx, fn)
	if t != nil && t.commitLost {
		// The broken connection is back in the pool (which drops it), so
		// that asking does not wait for it.
		return s.resolveCommit(ctx, t, err)
	}
	return err
}

func (s *Store) write(ctx context.Context, fn func(allot.Tx) error) (t *tx, err error) {
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	// A connection left inside a transaction is closed, not reused, by
	// the pool on release.
	defer pc.Release()
	t = &tx{conn: pc.Conn(), customPlans: s.customPlans, pid: pc.Conn().PgConn().PID()}
	t.q = q{db: flushing{t}}
	t.queue(nil, "BEGIN")
	// The transaction's id, read with its first statement: if the
	// connection breaks during COMMIT, it is how to ask whether the
	// transaction committed.
	t.pending = append(t.pending, &stmt{sql: "SELECT pg_current_xact_id()::text", row: func(r pgx.Row) error { return r.Scan(&t.xid) }})
	defer func() {
		if err != nil && !t.commitLost && t.conn.PgConn().TxStatus() != 'I' {
			if _, rerr := t.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil {
				t.conn.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	if err := fn(t); err != nil {
		return t, err
	}
	// A write judged here, on its command tag (an Idempotency-Key still
	// ours), must be judged before COMMIT is sent: in one pipeline the
	// server would commit before the client saw the verdict.
	if t.checked() {
		if err := t.flush(ctx); err != nil {
			return t, err
		}
	}
	t.queue(func(ct pgconn.CommandTag) error {
		if ct.String() != "COMMIT" {
			return fmt.Errorf("postgres: transaction ended with %q, not COMMIT", ct.String())
		}
		return nil
	}, "COMMIT")
	err = t.flush(ctx)
	// A server's error is an answer: the transaction rolled back. A broken
	// connection after the pipeline was sent is not: COMMIT may have
	// reached the server and its answer been lost.
	t.commitLost = err != nil && t.conn.IsClosed() && !pgconn.SafeToRetry(err)
	return t, err
}

// commitResolveTimeout bounds how long Write asks after a lost COMMIT.
var commitResolveTimeout = 15 * time.Second

// resolveCommit finds out whether the transaction whose COMMIT went
// unanswered committed: nil if it did, err if it rolled back, and err
// wrapped in allot.ErrOutcomeUnknown if that cannot be told within
// commitResolveTimeout. It asks on a connection of its own, not the
// pool's: the pool may be full of writers waiting on this very
// transaction's locks. Its server process may still be running it: that
// process is stopped after a second (it can only end the transaction), so
// that the answer is final and its locks are released.
func (s *Store) resolveCommit(ctx context.Context, t *tx, err error) error {
	unknown := fmt.Errorf("%w: %w", allot.ErrOutcomeUnknown, err)
	if t.xid == "" {
		return unknown
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitResolveTimeout)
	defer cancel()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	wait := 10 * time.Millisecond
	for start := time.Now(); ; {
		var st *string
		qerr := ctx.Err()
		if conn == nil && qerr == nil {
			conn, qerr = pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
		}
		if qerr == nil {
			qerr = conn.QueryRow(ctx, `SELECT pg_xact_status($1::xid8)`, t.xid).Scan(&st)
		}
		switch {
		case qerr != nil:
			if conn != nil {
				conn.Close(context.Background())
				conn = nil
			}
		case st != nil && *st == "committed":
			slog.Warn("a COMMIT went unanswered; the transaction committed", "xid", t.xid, "err", err)
			return nil
		case st != nil && *st == "aborted":
			return err
		case st != nil && *st == "in progress" && time.Since(start) > time.Second:
			// Only the connection that ran it could end it, and that one is
			// gone: stop its process (if it is still this transaction's).
			_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE pid = $1 AND backend_xid::text = ($2::text::bigint % 4294967296)::text`, t.pid, t.xid)
		}
		select {
		case <-ctx.Done():
			return unknown
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// IsRetryable reports deadlocks and serialization failures.
func (s *Store) IsRetryable(err error) bool {
	if errors.Is(err, allot.ErrOutcomeUnknown) {
		return false
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// q implements allot.Reader on the pool or a transaction.
type q struct{ db querier }

func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return allot.ErrNotFound
	}
	return err
}

func (q q) GetResource(ctx context.Context, id string) (allot.Resource, error) {
	var r allot.Resource
	var minor, scale sql.NullInt64
	var cur sql.NullString
	err := q.db.QueryRow(ctx, `SELECT id, name, kind, capacity, price_minor, price_scale, currency, created_at, threshold FROM resources WHERE id = $1`, id).
		Scan(&r.ID, &r.Name, &r.Kind, &r.Capacity, &minor, &scale, &cur, &r.CreatedAt, &r.Threshold)
	if err != nil {
		return r, notFound(err)
	}
	r.Price, r.CreatedAt = rowcodec.DecodeMoney(minor, scale, cur), r.CreatedAt.UTC()
	if r.Kind != allot.KindSlot {
		return r, nil
	}
	rows, err := q.db.Query(ctx, `SELECT s.id, s.starts_at, b.capacity FROM slots s JOIN buckets b ON b.resource_id = s.resource_id AND b.bkey = s.id WHERE s.resource_id = $1 ORDER BY s.id`, id)
	if err != nil {
		return r, err
	}
	defer rows.Close()
	for rows.Next() {
		var s allot.Slot
		if err := rows.Scan(&s.ID, &s.StartsAt, &s.Capacity); err != nil {
			return r, err
		}
		s.StartsAt = s.StartsAt.UTC()
		r.Slots = append(r.Slots, s)
	}
	return r, rows.Err()
}

func (q q) Buckets(ctx context.Context, resourceID, fromKey, toKey string) ([]allot.Bucket, error) {
	query := `SELECT resource_id, bkey, capacity, held, booked FROM buckets WHERE resource_id = $1`
	args := []any{resourceID}
	if fromKey != "" || toKey != "" {
		query += ` AND bkey >= $2 AND bkey < $3`
		args = append(args, fromKey, toKey)
	}
	return q.buckets(ctx, query+` ORDER BY bkey`, args...)
}

func (q q) buckets(ctx context.Context, query string, args ...any) ([]allot.Bucket, error) {
	rows, err := q.db.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.Bucket
	for rows.Next() {
		var b allot.Bucket
		if err := rows.Scan(&b.ResourceID, &b.Key, &b.Capacity, &b.Held, &b.Booked); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

const holdCols = `id, status, customer_id, expires_at, created_at, order_id, lines`

func scanHold(sc pgx.Row) (allot.Hold, error) {
	var h allot.Hold
	var lines string
	if err := sc.Scan(&h.ID, &h.Status, &h.CustomerID, &h.ExpiresAt, &h.CreatedAt, &h.OrderID, &lines); err != nil {
		return h, notFound(err)
	}
	h.ExpiresAt, h.CreatedAt = h.ExpiresAt.UTC(), h.CreatedAt.UTC()
	var err error
	h.Lines, err = rowcodec.DecodeLines[allot.Line](lines)
	return h, err
}

func (q q) GetHold(ctx context.Context, id string) (allot.Hold, error) {
	return scanHold(q.db.QueryRow(ctx, `SELECT `+holdCols+` FROM holds WHERE id = $1`, id))
}

const orderCols = `id, status, customer_id, hold_id, lines, total_minor, total_scale, currency, created_at, updated_at, payment`

func scanOrder(sc pgx.Row) (allot.Order, error) {
	var o allot.Order
	var lines string
	var minor, scale sql.NullInt64
	var cur sql.NullString
	var payment string
	if err := sc.Scan(&o.ID, &o.Status, &o.CustomerID, &o.HoldID, &lines, &minor, &scale, &cur, &o.CreatedAt, &o.UpdatedAt, &payment); err != nil {
		return o, notFound(err)
	}
	o.Total, o.CreatedAt, o.UpdatedAt = rowcodec.DecodeMoney(minor, scale, cur), o.CreatedAt.UTC(), o.UpdatedAt.UTC()
	var err error
	if o.Payment, err = rowcodec.DecodePayment(payment); err != nil {
		return o, err
	}
	o.Lines, err = rowcodec.DecodeLines[allot.OrderLine](lines)
	return o, err
}

func (q q) history(ctx context.Context, o *allot.Order) error {
	rows, err := q.db.Query(ctx, `SELECT from_status, to_status, cause, at FROM order_transitions WHERE order_id = $1 ORDER BY seq`, o.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	o.History = nil
	for rows.Next() {
		var t allot.Transition
		if err := rows.Scan(&t.From, &t.To, &t.Cause, &t.At); err != nil {
			return err
		}
		t.At = t.At.UTC()
		o.History = append(o.History, t)
	}
	return rows.Err()
}

func (q q) GetOrder(ctx context.Context, id string) (allot.Order, error) {
	o, err := scanOrder(q.db.QueryRow(ctx, `SELECT `+orderCols+` FROM orders WHERE id = $1`, id))
	if err != nil {
		return o, err
	}
	return o, q.history(ctx, &o)
}

func (q q) ListOrders(ctx context.Context, f allot.OrderFilter) ([]allot.Order, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.CustomerID != "" {
		add("customer_id = $%d", f.CustomerID)
	}
	if f.Status != "" {
		add("status = $%d", string(f.Status))
	}
	if f.AfterID != "" {
		add("id > $%d", f.AfterID)
	}
	query := `SELECT ` + orderCols + ` FROM orders`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, f.Limit)
	rows, err := q.db.Query(ctx, query+fmt.Sprintf(` ORDER BY id LIMIT $%d`, len(args)), args...)
	if err != nil {
		return nil, err
	}
	var out []allot.Order
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range out {
		if err := q.history(ctx, &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (q q) claims(ctx context.Context, query string, args ...any) ([]allot.Claim, error) {
	rows, err := q.db.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.Claim
	for rows.Next() {
		var c allot.Claim
		if err := rows.Scan(&c.OwnerID, &c.ResourceID, &c.Key, &c.Kind, &c.Quantity); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func (q q) Claims(ctx context.Context, resourceID string) ([]allot.Claim, error) {
	return q.claims(ctx, `SELECT owner_id, resource_id, bkey, kind, quantity FROM claims WHERE resource_id = $1 ORDER BY bkey, owner_id`, resourceID)
}

func (q q) EventsAfter(ctx context.Context, after int64, limit int) ([]allot.Event, error) {
	// A lookup per row by event_changes' unique seq: a join here may read
	// event_changes from its start.
	return q.events(ctx, `SELECT e.seq, COALESCE((SELECT c.change_no FROM event_changes c WHERE c.seq = e.seq), 0), e.id, e.type, e.resource_id, e.order_id, e.hold_id, e.at, e.payload
		FROM events e WHERE e.seq > $1 ORDER BY e.seq LIMIT $2`, after, limit)
}

func (q q) events(ctx context.Context, query string, args ...any) ([]allot.Event, error) {
	rows, err := q.db.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.Event
	for rows.Next() {
		var e allot.Event
		var payload string
		if err := rows.Scan(&e.Seq, &e.ChangeNo, &e.ID, &e.Type, &e.ResourceID, &e.OrderID, &e.HoldID, &e.At, &payload); err != nil {
			return nil, err
		}
		e.At, e.Payload = e.At.UTC(), []byte(payload)
		out = append(out, e)
	}
	return out, rows.Err()
}

const eventsAfterChangeSQL = `SELECT e.seq, c.change_no, e.id, e.type, e.resource_id, e.order_id, e.hold_id, e.at, e.payload
	FROM (SELECT change_no, seq FROM event_changes WHERE change_no > $1 ORDER BY change_no LIMIT $2) c
	CROSS JOIN LATERAL (SELECT * FROM events e WHERE e.seq = c.seq LIMIT 1) e ORDER BY c.change_no`

func (q q) EventsAfterChange(ctx context.Context, after int64, limit int) ([]allot.Event, error) {
	// Each event is looked up by its seq (LIMIT 1 keeps the planner from
	// flattening the lookup into a join, which it may then run as a merge
	// join that reads events from its first row).
	return q.events(ctx, eventsAfterChangeSQL, after, limit)
}

func (q q) Cursor(ctx context.Context, name string) (int64, error) {
	var v int64
	err := q.db.QueryRow(ctx, `SELECT value FROM counters WHERE name = $1`, name).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return v, err
}

func (q q) FeedItems(ctx context.Context, afterChange int64, limit int) ([]allot.FeedItem, error) {
	rows, err := q.db.Query(ctx, `SELECT order_id, change_no, modified, state, data FROM order_feed WHERE change_no > $1 ORDER BY change_no LIMIT $2`, afterChange, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.FeedItem
	for rows.Next() {
		var it allot.FeedItem
		var state, data string
		if err := rows.Scan(&it.ID, &it.ChangeNo, &it.Modified, &state, &data); err != nil {
			return nil, err
		}
		it.Modified, it.Deleted, it.Data = it.Modified.UTC(), state == "deleted", []byte(data)
		out = append(out, it)
	}
	return out, rows.Err()
}

func (q q) ExpiredHolds(ctx context.Context, now time.Time, limit int) ([]string, error) {
	rows, err := q.db.Query(ctx, `SELECT h.id FROM holds h
		WHERE ((h.status = 'active' AND h.expires_at <= $1) OR h.status = 'expired')
		  AND EXISTS (SELECT 1 FROM claims c WHERE c.owner_id = h.id)
		ORDER BY h.expires_at LIMIT $2`, now, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// ClaimIdempotencyKey claims key for an in-flight request (see allot.Store).
// A concurrent claim of the same key waits on the unique index until the
// first commits, then sees it.
func (s *Store) ClaimIdempotencyKey(ctx context.Context, c allot.IdempotencyClaim, staleAfter time.Duration) (*allot.IdempotencyRecord, error) {
	var rec *allot.IdempotencyRecord
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (key, hash, token, claimed_at) VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING`, c.Key, c.Hash, c.Token, c.At)
		if err != nil || tag.RowsAffected() == 1 {
			return err
		}
		r := allot.IdempotencyRecord{Key: c.Key}
		err = tx.QueryRow(ctx, `SELECT hash, token, done, status, body, claimed_at FROM idempotency_keys WHERE key = $1 FOR UPDATE`, c.Key).
			Scan(&r.Hash, &r.Token, &r.Done, &r.Status, &r.Body, &r.ClaimedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("idempotency key %q vanished while claiming it; retry", c.Key)
		}
		if err != nil {
			return err
		}
		if !r.Done && r.Hash == c.Hash && c.At.Sub(r.ClaimedAt) > staleAfter {
			_, err = tx.Exec(ctx, `UPDATE idempotency_keys SET token = $1, claimed_at = $2 WHERE key = $3`, c.Token, c.At, c.Key)
			return err
		}
		rec = &r
		return nil
	})
	return rec, err
}

// SetCursor stores a named position; it never moves one backwards (two
// relays of one sink would otherwise undo each other's progress).
func (s *Store) SetCursor(ctx context.Context, name string, v int64) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO counters (name, value) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value WHERE counters.value < excluded.value`, name, v)
	return err
}

// ReleaseIdempotencyKey forgets an in-flight claim.
func (s *Store) ReleaseIdempotencyKey(ctx context.Context, key, token string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM idempotency_keys WHERE key = $1 AND token = $2 AND NOT done`, key, token)
	return err
}

// DeleteIdempotencyKeysBefore forgets keys claimed before t.
func (s *Store) DeleteIdempotencyKeysBefore(ctx context.Context, t time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM idempotency_keys WHERE claimed_at < $1`, t)
	return int(tag.RowsAffected()), err
}

// tx is one write transaction. Writes whose result is not needed at once
// are queued and sent together, pipelined in one round trip, before the next
// read or the commit: a batch of many requests costs a few round trips, not
// a few per request. Inserts into one table queued in one window become one
// multi-row statement, placed where its first row was queued (rows inserted
// in a window are never touched by another statement of the same window).
// A queued write that fails fails the transaction.
type tx struct {
	q
	xid         string // the transaction's id (xid8), once read
	pid         uint32 // its server process
	commitLost  bool   // the connection broke once COMMIT may have been sent
	conn        *pgx.Conn
	customPlans bool
	pending     []any // *stmt or bulkRows, in order
	bulk        map[string]bulkRows
}

type stmt struct {
	sql   string
	args  []any
	check func(pgconn.CommandTag) error
	// row, if set, reads the statement's one row instead (check unused).
	row func(pgx.Row) error
}

// bulkRows accumulates rows for one multi-row INSERT.
type bulkRows interface{ statement() (string, []any) }

// queue adds a write; check, if set, judges its command tag.
func (t *tx) queue(check func(pgconn.CommandTag) error, sql string, args ...any) {
	t.pending = append(t.pending, &stmt{sql: sql, args: args, check: check})
}

// checked reports whether a pending write has a check.
func (t *tx) checked() bool {
	for _, p := range t.pending {
		if st, ok := p.(*stmt); ok && st.check != nil {
			return true
		}
	}
	return false
}

// rows returns the window's accumulator for kind, making it if needed.
func (t *tx) rows(kind string, mk func() bulkRows) bulkRows {
	if r, ok := t.bulk[kind]; ok {
		return r
	}
	if t.bulk == nil {
		t.bulk = map[string]bulkRows{}
	}
	r := mk()
	t.bulk[kind] = r
	t.pending = append(t.pending, r)
	return r
}

// batch turns the pending writes into a pipeline, with the readers of
// their results in order; the caller may queue one more statement after
// them.
func (t *tx) batch() (*pgx.Batch, []func(pgx.BatchResults) error) {
	b := &pgx.Batch{}
	reads := make([]func(pgx.BatchResults) error, 0, len(t.pending))
	for _, p := range t.pending {
		switch p := p.(type) {
		case *stmt:
			b.Queue(p.sql, p.args...)
			reads = append(reads, p.read)
		case bulkRows:
			sql, args := p.statement()
			b.Queue(sql, args...)
			reads = append(reads, execOnly)
		}
	}
	t.pending, t.bulk = t.pending[:0], nil
	return b, reads
}

func execOnly(br pgx.BatchResults) error {
	_, err := br.Exec()
	return err
}

// read takes the statement's result from br and judges it.
func (st *stmt) read(br pgx.BatchResults) error {
	if st.row != nil {
		return st.row(br.QueryRow())
	}
	ct, err := br.Exec()
	if err == nil && st.check != nil {
		err = st.check(ct)
	}
	return err
}

// send runs the pending writes and then, if sql is set, that statement too,
// all in one round trip; it returns the open results, positioned at sql.
func (t *tx) send(ctx context.Context, sql string, args ...any) (pgx.BatchResults, error) {
	b, reads := t.batch()
	if sql != "" {
		b.Queue(sql, args...)
	}
	br := t.conn.SendBatch(ctx, b)
	for _, read := range reads {
		if err := read(br); err != nil {
			br.Close()
			return nil, err
		}
	}
	return br, nil
}

func (t *tx) flush(ctx context.Context) error {
	if len(t.pending) == 0 {
		return nil
	}
	br, err := t.send(ctx, "")
	if err != nil {
		return err
	}
	return br.Close()
}

type claimRows struct {
	os, rs, ks, kinds []string
	qs                []int32
}

func (r *claimRows) statement() (string, []any) {
	return `INSERT INTO claims (owner_id, resource_id, bkey, kind, quantity)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[])`, []any{r.os, r.rs, r.ks, r.kinds, r.qs}
}

type holdRows struct {
	ids, statuses, customers, orderIDs, lines []string
	exps, createds                            []time.Time
}

func (r *holdRows) statement() (string, []any) {
	return `INSERT INTO holds (` + holdCols + `)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::text[])`,
		[]any{r.ids, r.statuses, r.customers, r.exps, r.createds, r.orderIDs, r.lines}
}

type orderRows struct {
	ids, statuses, customers, holdIDs, lines, payments []string
	minors, scales                                     []*int64
	currencies                                         []*string
	createds, updateds                                 []time.Time
}

func (r *orderRows) statement() (string, []any) {
	return `INSERT INTO orders (` + orderCols + `)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[])`,
		[]any{r.ids, r.statuses, r.customers, r.holdIDs, r.lines, r.minors, r.scales, r.currencies, r.createds, r.updateds, r.payments}
}

type transitionRows struct {
	orderIDs, froms, tos, causes []string
	seqs                         []int32
	ats                          []time.Time
}

func (r *transitionRows) statement() (string, []any) {
	return `INSERT INTO order_transitions (order_id, seq, from_status, to_status, cause, at)
		SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])`,
		[]any{r.orderIDs, r.seqs, r.froms, r.tos, r.causes, r.ats}
}

type eventRows struct {
	ids, types, rs, os, hs, payloads []string
	ats                              []time.Time
}

func (r *eventRows) statement() (string, []any) {
	// A trigger queues each new event in events_pending for its number.
	return `INSERT INTO events (id, type, resource_id, order_id, hold_id, at, payload)
		SELECT a, b, c, d, e, f, g FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
		WITH ORDINALITY AS v(a, b, c, d, e, f, g, n) ORDER BY n`,
		[]any{r.ids, r.types, r.rs, r.os, r.hs, r.ats, r.payloads}
}

// flushing is the transaction's querier: a statement sent directly goes in
// one pipeline after the queued writes, so reads see them.
type flushing struct{ t *tx }

func (f flushing) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	br, err := f.t.send(ctx, sql, args...)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	ct, err := br.Exec()
	return ct, errors.Join(err, br.Close())
}

func (f flushing) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	br, err := f.t.send(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		return nil, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

func (f flushing) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := f.Query(ctx, sql, args...)
	return batchRow{rows, err}
}

// batchRows closes its pipeline with its rows.
type batchRows struct {
	pgx.Rows
	br     pgx.BatchResults
	closed bool
	err    error
}

func (r *batchRows) Close() {
	if !r.closed {
		r.closed = true
		r.Rows.Close()
		r.err = r.br.Close()
	}
}

func (r *batchRows) Err() error {
	if err := r.Rows.Err(); err != nil {
		return err
	}
	return r.err
}

type batchRow struct {
	rows pgx.Rows
	err  error
}

func (r batchRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		r.rows.Close()
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

func rowsAffected(want error) func(pgconn.CommandTag) error {
	return func(ct pgconn.CommandTag) error {
		if ct.RowsAffected() == 0 {
			return want
		}
		return nil
	}
}

var _ allot.Tx = (*tx)(nil)

func (t *tx) InsertResource(ctx context.Context, r allot.Resource) error {
	minor, scale, cur := rowcodec.Money(r.Price)
	// ON CONFLICT rather than catching 23505: an error would abort the
	// transaction, and the engine commits refusals.
	tag, err := t.db.Exec(ctx, `INSERT INTO resources (id, name, kind, capacity, price_minor, price_scale, currency, created_at, threshold) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
		r.ID, r.Name, string(r.Kind), r.Capacity, minor, scale, cur, r.CreatedAt, r.Threshold)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return allot.ErrConflict
	}
	if r.Kind == allot.KindStock {
		_, err = t.db.Exec(ctx, `INSERT INTO buckets (resource_id, bkey, capacity) VALUES ($1, $2, $3)`, r.ID, allot.StockKey, r.Capacity)
		return err
	}
	for _, s := range r.Slots {
		if err := t.InsertSlot(ctx, r.ID, s); err != nil {
			return err
		}
	}
	return nil
}

func (t *tx) InsertSlot(ctx context.Context, resourceID string, s allot.Slot) error {
	tag, err := t.db.Exec(ctx, `INSERT INTO slots (resource_id, id, starts_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, resourceID, s.ID, s.StartsAt)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return allot.ErrConflict
	}
	_, err = t.db.Exec(ctx, `INSERT INTO buckets (resource_id, bkey, capacity) VALUES ($1, $2, $3)`, resourceID, s.ID, s.Capacity)
	return err
}

// LockBuckets creates missing nightly buckets, then locks all in key order.
// The insert goes first and in key order too: a transaction that waits on
// another's uncommitted new bucket holds no bucket lock yet, so no cycle.
func (t *tx) LockBuckets(ctx context.Context, specs []allot.BucketSpec) ([]allot.Bucket, error) {
	var cr, ck []string
	var cc []int32
	rs, ks := make([]string, len(specs)), make([]string, len(specs))
	for i, s := range specs {
		rs[i], ks[i] = s.ResourceID, s.Key
		if s.Create {
			cr, ck, cc = append(cr, s.ResourceID), append(ck, s.Key), append(cc, int32(s.DefaultCapacity))
		}
	}
	if len(cr) > 0 {
		if _, err := t.db.Exec(ctx, `INSERT INTO buckets (resource_id, bkey, capacity)
			SELECT * FROM unnest($1::text[], $2::text[], $3::int[]) ORDER BY 1, 2 ON CONFLICT DO NOTHING`, cr, ck, cc); err != nil {
			return nil, err
		}
	}
	t.customPlan(true)
	defer t.customPlan(false)
	return t.buckets(ctx, lockBucketsSQL, rs, ks)
}

// lockBucketsSQL locks buckets one key at a time, in the order given (the
// engine's key order), each looked up by its primary key. As a join, a
// generic plan made while the table was small (a new database: nightly
// buckets are created on first use) scanned the whole table, and kept
// scanning it as the table grew, until autovacuum's next ANALYZE: the hotel
// benchmark ran at half speed, its batches' locking SELECT on the CPU. A
// lookup per key is the only join PostgreSQL can make of this; the lookup
// itself is planned for each execution (customPlan), as a generic plan made
// on a table of a few pages could scan it for every key.
const lockBucketsSQL = `SELECT b.resource_id, b.bkey, b.capacity, b.held, b.booked
	FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(r, k, i)
	CROSS JOIN LATERAL (SELECT * FROM buckets b WHERE b.resource_id = k.r AND b.bkey = k.k LIMIT 1 FOR UPDATE) b
	ORDER BY k.i`

// customPlan queues, around the statements on buckets (the locking SELECT
// and the UPDATE), a switch of the transaction to plans made for each
// execution, and back: a generic plan made while the table was small would
// scan it whole (see lockBucketsSQL). Only these: planning every statement
// of every write cost the mixed workload a third of its throughput.
// Queued, the switches cost no round trip.
func (t *tx) customPlan(on bool) {
	if !t.customPlans {
		return
	}
	if on {
		t.queue(nil, "SET LOCAL plan_cache_mode = force_custom_plan")
	} else {
		t.queue(nil, "SET LOCAL plan_cache_mode = DEFAULT")
	}
}

func (t *tx) SaveBuckets(ctx context.Context, bs []allot.Bucket) error {
	if len(bs) == 0 {
		return nil
	}
	rs, ks := make([]string, len(bs)), make([]string, len(bs))
	cs, hs, bks := make([]int32, len(bs)), make([]int32, len(bs)), make([]int32, len(bs))
	for i, b := range bs {
		rs[i], ks[i], cs[i], hs[i], bks[i] = b.ResourceID, b.Key, int32(b.Capacity), int32(b.Held), int32(b.Booked)
	}
	t.customPlan(true)
	t.queue(nil, `UPDATE buckets b SET capacity = v.c, held = v.h, booked = v.bk
		FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::int[]) AS v(r, k, c, h, bk)
		WHERE b.resource_id = v.r AND b.bkey = v.k`, rs, ks, cs, hs, bks)
	t.customPlan(false)
	return nil
}

func claimArrays(cs []allot.Claim) (os, rs, ks, kinds []string, qs []int32) {
	for _, c := range cs {
		os, rs, ks = append(os, c.OwnerID), append(rs, c.ResourceID), append(ks, c.Key)
		kinds, qs = append(kinds, string(c.Kind)), append(qs, int32(c.Quantity))
	}
	return
}

func (t *tx) AddClaims(ctx context.Context, cs []allot.Claim) error {
	r := t.rows("claims", func() bulkRows { return &claimRows{} }).(*claimRows)
	for _, c := range cs {
		r.os, r.rs, r.ks = append(r.os, c.OwnerID), append(r.rs, c.ResourceID), append(r.ks, c.Key)
		r.kinds, r.qs = append(r.kinds, string(c.Kind)), append(r.qs, int32(c.Quantity))
	}
	return nil
}

func (t *tx) OwnerClaims(ctx context.Context, ownerID string) ([]allot.Claim, error) {
	return t.claims(ctx, `SELECT owner_id, resource_id, bkey, kind, quantity FROM claims WHERE owner_id = $1 ORDER BY resource_id, bkey`, ownerID)
}

func (t *tx) DeleteClaims(ctx context.Context, cs []allot.Claim) error {
	if len(cs) == 0 {
		return nil
	}
	os, rs, ks, _, _ := claimArrays(cs)
	t.queue(nil, `DELETE FROM claims c USING unnest($1::text[], $2::text[], $3::text[]) AS v(o, r, k)
		WHERE c.owner_id = v.o AND c.resource_id = v.r AND c.bkey = v.k`, os, rs, ks)
	return nil
}

func (t *tx) MoveClaims(ctx context.Context, from, to string, k allot.ClaimKind) error {
	t.queue(nil, `UPDATE claims SET owner_id = $1, kind = $2 WHERE owner_id = $3`, to, string(k), from)
	return nil
}

func (t *tx) ExpiredHoldClaims(ctx context.Context, keys []allot.BucketKey, now time.Time) ([]allot.Claim, error) {
	rs, ks := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		rs[i], ks[i] = k.ResourceID, k.Key
	}
	return t.claims(ctx, `SELECT c.owner_id, c.resource_id, c.bkey, c.kind, c.quantity
		FROM claims c JOIN unnest($1::text[], $2::text[]) AS k(r, k) ON c.resource_id = k.r AND c.bkey = k.k
		JOIN holds h ON h.id = c.owner_id
		WHERE c.kind = 'held' AND (h.status = 'expired' OR (h.status = 'active' AND h.expires_at <= $3))
		ORDER BY c.resource_id, c.bkey, c.owner_id`, rs, ks, now)
}

func (t *tx) InsertHold(ctx context.Context, h allot.Hold) error {
	r := t.rows("holds", func() bulkRows { return &holdRows{} }).(*holdRows)
	r.ids, r.statuses, r.customers = append(r.ids, h.ID), append(r.statuses, string(h.Status)), append(r.customers, h.CustomerID)
	r.exps, r.createds = append(r.exps, h.ExpiresAt), append(r.createds, h.CreatedAt)
	r.orderIDs, r.lines = append(r.orderIDs, h.OrderID), append(r.lines, rowcodec.Lines(h.Lines))
	return nil
}

func (t *tx) SetHoldStatus(ctx context.Context, id string, st allot.HoldStatus, orderID string) error {
	// The engine locked the hold (LockHold) in this transaction: it exists.
	t.queue(nil, `UPDATE holds SET status = $1, order_id = $2 WHERE id = $3`, string(st), orderID, id)
	return nil
}

// LockHold locks the hold id, existing or not: first a transaction lock on
// the id, then its row. FOR UPDATE alone locks no row that is not there
// yet, and two first leases under one new id (on different buckets, so no
// bucket lock between them) each wrote claims under it: its row kept one
// lease's lines, and the other's claims could never be released. With the
// id locked, the second waits, and its SELECT, a statement of its own, sees
// the first's row. The lock goes in the same round trip as the SELECT.
func (t *tx) LockHold(ctx context.Context, id string) (allot.Hold, error) {
	t.queue(nil, `SELECT pg_advisory_xact_lock(hashtextextended('allot-hold:' || current_schema() || ':' || $1, 0))`, id)
	return scanHold(t.db.QueryRow(ctx, `SELECT `+holdCols+` FROM holds WHERE id = $1 FOR UPDATE`, id))
}

func (t *tx) InsertOrder(ctx context.Context, o allot.Order) error {
	r := t.rows("orders", func() bulkRows { return &orderRows{} }).(*orderRows)
	r.ids, r.statuses, r.customers, r.holdIDs = append(r.ids, o.ID), append(r.statuses, string(o.Status)), append(r.customers, o.CustomerID), append(r.holdIDs, o.HoldID)
	r.lines = append(r.lines, rowcodec.OrderLines(o.Lines))
	var minor, scale *int64
	var cur *string
	if o.Total != nil {
		m, sc := o.Total.Minor, int64(o.Total.Scale)
		minor, scale, cur = &m, &sc, &o.Total.Currency
	}
	r.minors, r.scales, r.currencies = append(r.minors, minor), append(r.scales, scale), append(r.currencies, cur)
	r.createds, r.updateds = append(r.createds, o.CreatedAt), append(r.updateds, o.UpdatedAt)
	r.payments = append(r.payments, rowcodec.Payment(o.Payment))
	tr := t.rows("transitions", func() bulkRows { return &transitionRows{} }).(*transitionRows)
	for i, h := range o.History {
		tr.orderIDs, tr.seqs, tr.froms = append(tr.orderIDs, o.ID), append(tr.seqs, int32(i+1)), append(tr.froms, string(h.From))
		tr.tos, tr.causes, tr.ats = append(tr.tos, string(h.To)), append(tr.causes, h.Cause), append(tr.ats, h.At)
	}
	return nil
}

func (t *tx) LockOrder(ctx context.Context, id string) (allot.Order, error) {
	o, err := scanOrder(t.db.QueryRow(ctx, `SELECT `+orderCols+` FROM orders WHERE id = $1 FOR UPDATE`, id))
	if err != nil {
		return o, err
	}
	return o, t.history(ctx, &o)
}

func (t *tx) SetOrderStatus(ctx context.Context, id string, tr allot.Transition) error {
	// The engine locked the order (LockOrder) in this transaction: it exists.
	t.queue(nil, `UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3`, string(tr.To), tr.At, id)
	t.queue(nil, `INSERT INTO order_transitions (order_id, seq, from_status, to_status, cause, at)
		SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM order_transitions WHERE order_id = $1`,
		id, string(tr.From), string(tr.To), tr.Cause, tr.At)
	return nil
}

func (t *tx) AppendEvents(ctx context.Context, es []allot.Event) error {
	if len(es) == 0 {
		return nil
	}
	r := t.rows("events", func() bulkRows { return &eventRows{} }).(*eventRows)
	for _, e := range es {
		r.ids, r.types, r.rs, r.os, r.hs = append(r.ids, e.ID), append(r.types, e.Type), append(r.rs, e.ResourceID), append(r.os, e.OrderID), append(r.hs, e.HoldID)
		r.ats, r.payloads = append(r.ats, e.At), append(r.payloads, string(e.Payload))
	}
	return nil
}

// LockSequencer takes the sequencer role for this transaction, per schema
// (advisory locks are per database; tests share one), or reports that
// another node has it.
func (t *tx) LockSequencer(ctx context.Context) (bool, error) {
	var ok bool
	err := t.db.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtext('allot-sequencer:' || current_schema()))`).Scan(&ok)
	return ok, err
}

const unsequencedEventsSQL = `SELECT e.seq, 0::bigint, e.id, e.type, e.resource_id, e.order_id, e.hold_id, e.at, e.payload
	FROM (SELECT seq FROM events_pending ORDER BY seq LIMIT $1) p
	CROSS JOIN LATERAL (SELECT * FROM events e WHERE e.seq = p.seq LIMIT 1) e ORDER BY p.seq`

func (t *tx) UnsequencedEvents(ctx context.Context, limit int) ([]allot.Event, error) {
	// As in EventsAfterChange: a lookup per pending event. Planned as a
	// join, this read every event from the first one on each run, and cost
	// PostgreSQL more CPU than the batches it numbered. LIMIT counts
	// pending rows before their lookup: it relies on events never being
	// deleted (the trigger queues an event in the transaction that
	// inserts it), as a pending row without its event would stall the
	// sequencer.
	return t.events(ctx, unsequencedEventsSQL, limit)
}

func (t *tx) LastChangeNumber(ctx context.Context) (int64, error) {
	var n int64
	err := t.db.QueryRow(ctx, `SELECT value FROM counters WHERE name = 'change_no'`).Scan(&n)
	return n, err
}

func (t *tx) Sequence(ctx context.Context, seqs, changeNos []int64, items []allot.FeedItem, opps []allot.OpportunityChange) error {
	if len(seqs) == 0 {
		return nil
	}
	// Guarded, and judged before COMMIT: should two sequencers ever run at
	// once (the advisory lock is per schema name), one fails; none can
	// renumber an event a reader has passed.
	t.queue(func(ct pgconn.CommandTag) error {
		if ct.RowsAffected() != int64(len(seqs)) {
			return errSequenceRace
		}
		return nil
	}, `DELETE FROM events_pending WHERE seq = ANY($1::bigint[])`, seqs)
	t.queue(nil, `INSERT INTO event_changes (change_no, seq) SELECT * FROM unnest($1::bigint[], $2::bigint[])`, changeNos, seqs)
	if len(items) > 0 {
		ids, states, data := make([]string, len(items)), make([]string, len(items)), make([]string, len(items))
		nos, mods := make([]int64, len(items)), make([]time.Time, len(items))
		for i, it := range items {
			ids[i], nos[i], mods[i], states[i], data[i] = it.ID, it.ChangeNo, it.Modified, "updated", string(it.Data)
			if it.Deleted {
				states[i] = "deleted"
			}
		}
		t.queue(nil, `INSERT INTO order_feed (order_id, change_no, modified, state, data)
			SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[])
			ON CONFLICT (order_id) DO UPDATE SET change_no = excluded.change_no, modified = excluded.modified, state = excluded.state, data = excluded.data`,
			ids, nos, mods, states, data)
	}
	if len(opps) > 0 {
		rs, ks, nos, mods, dels := make([]string, len(opps)), make([]string, len(opps)), make([]int64, len(opps)), make([]time.Time, len(opps)), make([]bool, len(opps))
		for i, o := range opps {
			rs[i], ks[i], nos[i], mods[i], dels[i] = o.ResourceID, o.Key, o.ChangeNo, o.Modified, o.Deleted
		}
		t.queue(nil, `INSERT INTO opportunity_feed (resource_id, bkey, change_no, modified, deleted)
			SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::boolean[])
			ON CONFLICT (resource_id, bkey) DO UPDATE SET change_no = excluded.change_no, modified = excluded.modified,
				deleted = opportunity_feed.deleted OR excluded.deleted`,
			rs, ks, nos, mods, dels)
	}
	first, last := changeNos[0], changeNos[0]
	for _, c := range changeNos {
		first, last = min(first, c), max(last, c)
	}
	for _, o := range opps {
		last = max(last, o.ChangeNo)
	}
	// Compare and set: the counter must still be where this sequencer read it.
	t.queue(rowsAffected(errSequenceRace), `UPDATE counters SET value = $1 WHERE name = 'change_no' AND value = $2`, last, first-1)
	return nil
}

// errSequenceRace: another sequencer numbered events meanwhile; this one's
// transaction rolls back and the next round starts afresh.
var errSequenceRace = errors.New("postgres: another sequencer ran at the same time")

func (t *tx) CompleteIdempotencyKey(ctx context.Context, key, token string, status int, body []byte) error {
	t.queue(rowsAffected(allot.ErrIdempotencyLost), `UPDATE idempotency_keys SET done = true, status = $1, body = $2 WHERE key = $3 AND token = $4 AND NOT done`, status, body, key, token)
	return nil
}
