// Package sqlite is Allot's embedded store: one SQLite file, no server.
//
// It uses modernc.org/sqlite (pure Go, no cgo) in WAL mode with
// synchronous=FULL, so a committed write survives power loss. SQLite has one
// writer at a time: writes go through a pool of one connection that begins
// with BEGIN IMMEDIATE, so a write transaction holds the write lock from its
// first statement and never fails half-way on a lock upgrade; reads use a
// separate pool and see the last committed state (WAL readers don't block).
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/allot/allot"
	"github.com/allot/allot/store/internal/rowcodec"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is the SQLite store.
type Store struct {
	q
	w *sql.DB // one connection: the single writer
	r *sql.DB

	// Prepared statements by query text. SQLite parsing a statement costs
	// about as much as running it, and the driver does not cache.
	mu    sync.Mutex
	stmts map[*sql.DB]map[string]*sql.Stmt

	stopCheckpoints func()
	checkpoints     sync.WaitGroup
}

// stmt returns query prepared on db, if it has been.
func (s *Store) stmt(db *sql.DB, query string) *sql.Stmt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stmts[db][query]
}

// prepare prepares queries on db for later use. It must not run inside a
// transaction of the writer: the writer has one connection.
func (s *Store) prepare(ctx context.Context, db *sql.DB, queries []string) {
	for _, query := range queries {
		if s.stmt(db, query) != nil {
			continue
		}
		st, err := db.PrepareContext(ctx, query)
		if err != nil {
			continue // it will be prepared per use, as before
		}
		s.mu.Lock()
		if s.stmts[db] == nil {
			s.stmts[db] = map[string]*sql.Stmt{}
		}
		if s.stmts[db][query] == nil {
			s.stmts[db][query] = st
		} else {
			st.Close()
		}
		s.mu.Unlock()
	}
}

// cached runs queries through prepared statements: on a pool, or inside
// a transaction of the writer.
type cached struct {
	s  *Store
	db *sql.DB
	tx *sql.Tx // nil outside a transaction
	// missed collects, in a transaction, queries to prepare after it.
	missed *[]string
}

func (c cached) prepared(ctx context.Context, query string) (*sql.Stmt, error) {
	st := c.s.stmt(c.db, query)
	switch {
	case st != nil && c.tx != nil:
		return c.tx.StmtContext(ctx, st), nil
	case st != nil:
		return st, nil
	case c.tx != nil:
		*c.missed = append(*c.missed, query)
		return c.tx.PrepareContext(ctx, query)
	}
	c.s.prepare(ctx, c.db, []string{query})
	if st := c.s.stmt(c.db, query); st != nil {
		return st, nil
	}
	return c.db.PrepareContext(ctx, query)
}

func (c cached) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	st, err := c.prepared(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

func (c cached) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := c.prepared(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

func (c cached) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := c.prepared(ctx, query)
	if err != nil {
		// A Row carrying err: QueryRowContext on a cancelled context.
		cctx, cancel := context.WithCancelCause(ctx)
		cancel(err)
		return c.db.QueryRowContext(cctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

var _ allot.Store = (*Store)(nil)

// Open opens (creating if needed) the database file at path and migrates it.
func Open(ctx context.Context, path string) (*Store, error) {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("sqlite: creating %s: %w", dir, err)
		}
	}
	dsn := func(txlock string, extra ...string) string {
		v := url.Values{}
		for _, p := range append([]string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(FULL)", "foreign_keys(1)", "temp_store(MEMORY)"}, extra...) {
			v.Add("_pragma", p)
		}
		v.Set("_txlock", txlock)
		return "file:" + uriPath(path) + "?" + v.Encode()
	}
	// No commit checkpoints the WAL (a commit that did would stall its
	// batch); a background loop does, passively, and only between two
	// transactions does it use the writer (checkpointLoop). When the WAL
	// starts over, the writer truncates a file grown past 64 MB (by a big
	// transaction, such as a migration that copies a table) instead of
	// keeping it at its largest for as long as the process runs.
	w, err := sql.Open("sqlite", dsn("immediate", "wal_autocheckpoint(0)", "journal_size_limit(67108864)"))
	if err != nil {
		return nil, err
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	r, err := sql.Open("sqlite", dsn("deferred"))
	if err != nil {
		w.Close()
		return nil, err
	}
	r.SetMaxOpenConns(max(4, runtime.GOMAXPROCS(0)))
	s := &Store{w: w, r: r, stmts: map[*sql.DB]map[string]*sql.Stmt{}}
	s.q = q{db: cached{s: s, db: r}}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	cctx, stop := context.WithCancel(context.Background())
	s.stopCheckpoints = stop
	s.checkpoints.Go(func() { s.checkpointLoop(cctx) })
	return s, nil
}

// uriPath escapes a file path for a SQLite URI filename, which SQLite
// percent-decodes and cuts at '?' (its parameters) and '#': unescaped, "a#b.db"
// would open "a". Cleaning it keeps a leading "//" from reading as a host.
func uriPath(path string) string {
	return strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(filepath.Clean(path))
}

// walLimit is the WAL size (pages) past which a checkpoint may make
// writers wait, so that the file cannot grow without bound.
const walLimit = 20000

// walRestartAt is the WAL size (pages, 16 MB) past which the writer
// checkpoints between transactions, so that the WAL starts over.
const walRestartAt = 4096

// checkpointLoop copies the WAL back into the database every 200 ms without
// blocking writers (PASSIVE); past walRestartAt pages it lets the WAL start
// over, and with writers waiting (RESTART) only if the WAL has grown past
// walLimit because passive checkpoints could not finish.
func (s *Store) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var busy, log, done int
		if err := s.r.QueryRowContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &log, &done); err != nil {
			continue
		}
		switch {
		case log > walLimit && done < log:
			_, _ = s.w.ExecContext(ctx, `PRAGMA wal_checkpoint(RESTART)`)
		case log > walRestartAt && done == log:
			// A writer starts the WAL over from its first frame only if,
			// when it begins, every frame is already in the database. Under
			// steady writes the passive checkpoints above, on a reader,
			// never catch the writer between a commit and its next begin:
			// the WAL then grew without end (38 MB/s under load), every
			// commit lengthening the file. So once the reader's checkpoint
			// has caught up, the writer, between two transactions, copies
			// the few frames committed since: its next transaction starts
			// the WAL over, overwriting the file in place until it passes
			// walRestartAt again. Passive: a reader still on old frames
			// only defers it to a later tick.
			_, _ = s.w.ExecContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`)
		}
	}
}

// Close closes the database.
func (s *Store) Close() error {
	if s.stopCheckpoints != nil {
		s.stopCheckpoints()
		s.checkpoints.Wait()
	}
	s.mu.Lock()
	for _, m := range s.stmts {
		for _, st := range m {
			st.Close()
		}
	}
	s.mu.Unlock()
	return errors.Join(s.w.Close(), s.r.Close())
}

// migrate applies the embedded migrations not yet applied, each in the one
// write transaction (SQLite DDL is transactional).
func (s *Store) migrate(ctx context.Context) error {
	names, err := migrations.ReadDir("migrations")
	if err != nil {
		return err
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
			return err
		}
		for _, n := range names {
			var one int
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM schema_migrations WHERE version = ?`, n.Name()).Scan(&one)
			if err == nil {
				continue
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			b, err := migrations.ReadFile("migrations/" + n.Name())
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, string(b)); err != nil {
				return fmt.Errorf("sqlite: migration %s: %w", n.Name(), err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, n.Name(), micros(time.Now())); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Store) write(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Write runs fn in one write transaction.
func (s *Store) Write(ctx context.Context, fn func(allot.Tx) error) error {
	var missed []string
	err := s.write(ctx, func(t *sql.Tx) error {
		b := &buffered{c: cached{s: s, db: s.w, tx: t, missed: &missed}}
		err := fn(&tx{q: q{db: b}, buf: b})
		if err == nil {
			err = b.flush(ctx)
		}
		if b.err != nil {
			return b.err
		}
		return err
	})
	if len(missed) > 0 {
		s.prepare(context.WithoutCancel(ctx), s.w, missed)
	}
	return err
}

// IsRetryable reports a busy or locked database (another process writing).
func (s *Store) IsRetryable(err error) bool {
	var e *sqlite.Error
	if errors.As(err, &e) {
		c := e.Code() & 0xff
		return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED
	}
	return false
}

func micros(t time.Time) int64 { return t.UnixMicro() }
func fromMicros(v int64) time.Time {
	return time.UnixMicro(v).UTC()
}

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// q implements allot.Reader on a pool or a transaction.
type q struct{ db querier }

func notFound(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return allot.ErrNotFound
	}
	return err
}

func (q q) GetResource(ctx context.Context, id string) (allot.Resource, error) {
	var r allot.Resource
	var minor, scale sql.NullInt64
	var cur sql.NullString
	var created int64
	var threshold sql.NullInt64
	err := q.db.QueryRowContext(ctx, `SELECT id, name, kind, capacity, price_minor, price_scale, currency, created_at, threshold FROM resources WHERE id = ?`, id).
		Scan(&r.ID, &r.Name, &r.Kind, &r.Capacity, &minor, &scale, &cur, &created, &threshold)
	if err != nil {
		return r, notFound(err)
	}
	if threshold.Valid {
		v := int(threshold.Int64)
		r.Threshold = &v
	}
	r.Price, r.CreatedAt = rowcodec.DecodeMoney(minor, scale, cur), fromMicros(created)
	if r.Kind != allot.KindSlot {
		return r, nil
	}
	rows, err := q.db.QueryContext(ctx, `SELECT s.id, s.starts_at, b.capacity FROM slots s JOIN buckets b ON b.resource_id = s.resource_id AND b.bkey = s.id WHERE s.resource_id = ? ORDER BY s.id`, id)
	if err != nil {
		return r, err
	}
	defer rows.Close()
	for rows.Next() {
		var s allot.Slot
		var at int64
		if err := rows.Scan(&s.ID, &at, &s.Capacity); err != nil {
			return r, err
		}
		s.StartsAt = fromMicros(at)
		r.Slots = append(r.Slots, s)
	}
	return r, rows.Err()
}

func (q q) Buckets(ctx context.Context, resourceID, fromKey, toKey string) ([]allot.Bucket, error) {
	query := `SELECT resource_id, bkey, capacity, held, booked FROM buckets WHERE resource_id = ?`
	args := []any{resourceID}
	if fromKey != "" || toKey != "" {
		query += ` AND bkey >= ? AND bkey < ?`
		args = append(args, fromKey, toKey)
	}
	return q.buckets(ctx, query+` ORDER BY bkey`, args...)
}

func (q q) buckets(ctx context.Context, query string, args ...any) ([]allot.Bucket, error) {
	rows, err := q.db.QueryContext(ctx, query, args...)
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

func scanHold(sc interface{ Scan(...any) error }) (allot.Hold, error) {
	var h allot.Hold
	var exp, created int64
	var lines string
	if err := sc.Scan(&h.ID, &h.Status, &h.CustomerID, &exp, &created, &h.OrderID, &lines); err != nil {
		return h, notFound(err)
	}
	h.ExpiresAt, h.CreatedAt = fromMicros(exp), fromMicros(created)
	var err error
	h.Lines, err = rowcodec.DecodeLines[allot.Line](lines)
	return h, err
}

func (q q) GetHold(ctx context.Context, id string) (allot.Hold, error) {
	return scanHold(q.db.QueryRowContext(ctx, `SELECT `+holdCols+` FROM holds WHERE id = ?`, id))
}

const orderCols = `id, status, customer_id, hold_id, lines, total_minor, total_scale, currency, created_at, updated_at, payment`

func scanOrder(sc interface{ Scan(...any) error }) (allot.Order, error) {
	var o allot.Order
	var lines string
	var minor, scale sql.NullInt64
	var cur sql.NullString
	var created, updated int64
	var payment string
	if err := sc.Scan(&o.ID, &o.Status, &o.CustomerID, &o.HoldID, &lines, &minor, &scale, &cur, &created, &updated, &payment); err != nil {
		return o, notFound(err)
	}
	o.Total, o.CreatedAt, o.UpdatedAt = rowcodec.DecodeMoney(minor, scale, cur), fromMicros(created), fromMicros(updated)
	var err error
	if o.Payment, err = rowcodec.DecodePayment(payment); err != nil {
		return o, err
	}
	o.Lines, err = rowcodec.DecodeLines[allot.OrderLine](lines)
	return o, err
}

func (q q) history(ctx context.Context, o *allot.Order) error {
	rows, err := q.db.QueryContext(ctx, `SELECT from_status, to_status, cause, at FROM order_transitions WHERE order_id = ? ORDER BY seq`, o.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	o.History = nil
	for rows.Next() {
		var t allot.Transition
		var at int64
		if err := rows.Scan(&t.From, &t.To, &t.Cause, &at); err != nil {
			return err
		}
		t.At = fromMicros(at)
		o.History = append(o.History, t)
	}
	return rows.Err()
}

func (q q) GetOrder(ctx context.Context, id string) (allot.Order, error) {
	o, err := scanOrder(q.db.QueryRowContext(ctx, `SELECT `+orderCols+` FROM orders WHERE id = ?`, id))
	if err != nil {
		return o, err
	}
	return o, q.history(ctx, &o)
}

func (q q) ListOrders(ctx context.Context, f allot.OrderFilter) ([]allot.Order, error) {
	var where []string
	var args []any
	if f.CustomerID != "" {
		where, args = append(where, "customer_id = ?"), append(args, f.CustomerID)
	}
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, string(f.Status))
	}
	if f.AfterID != "" {
		where, args = append(where, "id > ?"), append(args, f.AfterID)
	}
	query := `SELECT ` + orderCols + ` FROM orders`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	rows, err := q.db.QueryContext(ctx, query+` ORDER BY id LIMIT ?`, append(args, f.Limit)...)
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
	rows, err := q.db.QueryContext(ctx, query, args...)
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
	return q.claims(ctx, `SELECT owner_id, resource_id, bkey, kind, quantity FROM claims WHERE resource_id = ? ORDER BY bkey, owner_id`, resourceID)
}

func (q q) EventsAfter(ctx context.Context, after int64, limit int) ([]allot.Event, error) {
	return q.events(ctx, `SELECT seq, COALESCE(change_no, 0), id, type, resource_id, order_id, hold_id, at, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
}

func (q q) events(ctx context.Context, query string, args ...any) ([]allot.Event, error) {
	rows, err := q.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.Event
	for rows.Next() {
		var e allot.Event
		var at int64
		var payload string
		if err := rows.Scan(&e.Seq, &e.ChangeNo, &e.ID, &e.Type, &e.ResourceID, &e.OrderID, &e.HoldID, &at, &payload); err != nil {
			return nil, err
		}
		e.At, e.Payload = fromMicros(at), []byte(payload)
		out = append(out, e)
	}
	return out, rows.Err()
}

func (q q) EventsAfterChange(ctx context.Context, after int64, limit int) ([]allot.Event, error) {
	return q.events(ctx, `SELECT seq, change_no, id, type, resource_id, order_id, hold_id, at, payload FROM events WHERE change_no > ? ORDER BY change_no LIMIT ?`, after, limit)
}

func (q q) Cursor(ctx context.Context, name string) (int64, error) {
	var v int64
	err := q.db.QueryRowContext(ctx, `SELECT value FROM counters WHERE name = ?`, name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return v, err
}

func (q q) FeedItems(ctx context.Context, afterChange int64, limit int) ([]allot.FeedItem, error) {
	rows, err := q.db.QueryContext(ctx, `SELECT order_id, change_no, modified, state, data FROM order_feed WHERE change_no > ? ORDER BY change_no LIMIT ?`, afterChange, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.FeedItem
	for rows.Next() {
		var it allot.FeedItem
		var modified int64
		var state, data string
		if err := rows.Scan(&it.ID, &it.ChangeNo, &modified, &state, &data); err != nil {
			return nil, err
		}
		it.Modified, it.Deleted, it.Data = fromMicros(modified), state == "deleted", []byte(data)
		out = append(out, it)
	}
	return out, rows.Err()
}

func (q q) ExpiredHolds(ctx context.Context, now time.Time, limit int) ([]string, error) {
	rows, err := q.db.QueryContext(ctx, `SELECT h.id FROM holds h
		WHERE ((h.status = 'active' AND h.expires_at <= ?) OR h.status = 'expired')
		  AND EXISTS (SELECT 1 FROM claims c WHERE c.owner_id = h.id)
		ORDER BY h.expires_at LIMIT ?`, micros(now), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// ClaimIdempotencyKey claims key for an in-flight request (see allot.Store).
func (s *Store) ClaimIdempotencyKey(ctx context.Context, c allot.IdempotencyClaim, staleAfter time.Duration) (*allot.IdempotencyRecord, error) {
	var rec *allot.IdempotencyRecord
	err := s.write(ctx, func(tx *sql.Tx) error {
		r := allot.IdempotencyRecord{Key: c.Key}
		var done int
		var at int64
		err := tx.QueryRowContext(ctx, `SELECT hash, token, done, status, body, claimed_at FROM idempotency_keys WHERE key = ?`, c.Key).
			Scan(&r.Hash, &r.Token, &done, &r.Status, &r.Body, &at)
		if errors.Is(err, sql.ErrNoRows) {
			_, err = tx.ExecContext(ctx, `INSERT INTO idempotency_keys (key, hash, token, claimed_at) VALUES (?, ?, ?, ?)`, c.Key, c.Hash, c.Token, micros(c.At))
			return err
		}
		if err != nil {
			return err
		}
		r.Done, r.ClaimedAt = done == 1, fromMicros(at)
		if !r.Done && r.Hash == c.Hash && c.At.Sub(r.ClaimedAt) > staleAfter {
			_, err = tx.ExecContext(ctx, `UPDATE idempotency_keys SET token = ?, claimed_at = ? WHERE key = ?`, c.Token, micros(c.At), c.Key)
			return err
		}
		rec = &r
		return nil
	})
	return rec, err
}

// SetCursor stores a named position; it never moves one backwards.
func (s *Store) SetCursor(ctx context.Context, name string, v int64) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO counters (name, value) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value WHERE counters.value < excluded.value`, name, v)
	return err
}

// ReleaseIdempotencyKey forgets an in-flight claim.
func (s *Store) ReleaseIdempotencyKey(ctx context.Context, key, token string) error {
	_, err := s.w.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE key = ? AND token = ? AND done = 0`, key, token)
	return err
}

// DeleteIdempotencyKeysBefore forgets keys claimed before t.
func (s *Store) DeleteIdempotencyKeysBefore(ctx context.Context, t time.Time) (int, error) {
	res, err := s.w.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE claimed_at < ?`, micros(t))
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// tx is one write transaction. SQLite has one writer, so the transaction
// holds the database's write lock: every row it reads is locked.
type tx struct {
	q
	buf *buffered
}

var _ allot.Tx = (*tx)(nil)

func isConflict(err error) bool {
	var e *sqlite.Error
	return errors.As(err, &e) && (e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE)
}

func (t *tx) InsertResource(ctx context.Context, r allot.Resource) error {
	minor, scale, cur := rowcodec.Money(r.Price)
	_, err := t.db.ExecContext(ctx, `INSERT INTO resources (id, name, kind, capacity, price_minor, price_scale, currency, created_at, threshold) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.Name, string(r.Kind), r.Capacity, minor, scale, cur, micros(r.CreatedAt), r.Threshold)
	if isConflict(err) {
		return allot.ErrConflict
	}
	if err != nil {
		return err
	}
	if r.Kind == allot.KindStock {
		_, err = t.db.ExecContext(ctx, `INSERT INTO buckets (resource_id, bkey, capacity) VALUES (?, ?, ?)`, r.ID, allot.StockKey, r.Capacity)
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
	_, err := t.db.ExecContext(ctx, `INSERT INTO slots (resource_id, id, starts_at) VALUES (?, ?, ?)`, resourceID, s.ID, micros(s.StartsAt))
	if isConflict(err) {
		return allot.ErrConflict
	}
	if err != nil {
		return err
	}
	_, err = t.db.ExecContext(ctx, `INSERT INTO buckets (resource_id, bkey, capacity) VALUES (?, ?, ?)`, resourceID, s.ID, s.Capacity)
	return err
}

func (t *tx) LockBuckets(ctx context.Context, specs []allot.BucketSpec) ([]allot.Bucket, error) {
	out := make([]allot.Bucket, 0, len(specs))
	for _, s := range specs {
		if s.Create {
			if _, err := t.db.ExecContext(ctx, `INSERT INTO buckets (resource_id, bkey, capacity) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, s.ResourceID, s.Key, s.DefaultCapacity); err != nil {
				return nil, err
			}
		}
		b := allot.Bucket{BucketKey: s.BucketKey}
		err := t.db.QueryRowContext(ctx, `SELECT capacity, held, booked FROM buckets WHERE resource_id = ? AND bkey = ?`, s.ResourceID, s.Key).Scan(&b.Capacity, &b.Held, &b.Booked)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func (t *tx) SaveBuckets(ctx context.Context, bs []allot.Bucket) error {
	for _, b := range bs {
		if _, err := t.db.ExecContext(ctx, `UPDATE buckets SET capacity = ?, held = ?, booked = ? WHERE resource_id = ? AND bkey = ?`, b.Capacity, b.Held, b.Booked, b.ResourceID, b.Key); err != nil {
			return err
		}
	}
	return nil
}

func (t *tx) AddClaims(ctx context.Context, cs []allot.Claim) error {
	for _, c := range cs {
		t.buf.add("claims", `INSERT INTO claims (owner_id, resource_id, bkey, kind, quantity) VALUES `, 5, c.OwnerID, c.ResourceID, c.Key, string(c.Kind), c.Quantity)
	}
	return nil
}

func (t *tx) OwnerClaims(ctx context.Context, ownerID string) ([]allot.Claim, error) {
	return t.claims(ctx, `SELECT owner_id, resource_id, bkey, kind, quantity FROM claims WHERE owner_id = ? ORDER BY resource_id, bkey`, ownerID)
}

func (t *tx) DeleteClaims(ctx context.Context, cs []allot.Claim) error {
	for _, c := range cs {
		if _, err := t.db.ExecContext(ctx, `DELETE FROM claims WHERE owner_id = ? AND resource_id = ? AND bkey = ?`, c.OwnerID, c.ResourceID, c.Key); err != nil {
			return err
		}
	}
	return nil
}

func (t *tx) MoveClaims(ctx context.Context, from, to string, k allot.ClaimKind) error {
	_, err := t.db.ExecContext(ctx, `UPDATE claims SET owner_id = ?, kind = ? WHERE owner_id = ?`, to, string(k), from)
	return err
}

func (t *tx) ExpiredHoldClaims(ctx context.Context, keys []allot.BucketKey, now time.Time) ([]allot.Claim, error) {
	var out []allot.Claim
	for _, k := range keys {
		cs, err := t.claims(ctx, `SELECT c.owner_id, c.resource_id, c.bkey, c.kind, c.quantity FROM claims c JOIN holds h ON h.id = c.owner_id
			WHERE c.resource_id = ? AND c.bkey = ? AND c.kind = 'held' AND (h.status = 'expired' OR (h.status = 'active' AND h.expires_at <= ?))
			ORDER BY c.owner_id`, k.ResourceID, k.Key, micros(now))
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

func (t *tx) InsertHold(ctx context.Context, h allot.Hold) error {
	t.buf.add("holds", `INSERT INTO holds (`+holdCols+`) VALUES `, 7,
		h.ID, string(h.Status), h.CustomerID, micros(h.ExpiresAt), micros(h.CreatedAt), h.OrderID, rowcodec.Lines(h.Lines))
	return nil
}

func (t *tx) SetHoldStatus(ctx context.Context, id string, st allot.HoldStatus, orderID string) error {
	res, err := t.db.ExecContext(ctx, `UPDATE holds SET status = ?, order_id = ? WHERE id = ?`, string(st), orderID, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return allot.ErrNotFound
	}
	return nil
}

func (t *tx) LockHold(ctx context.Context, id string) (allot.Hold, error) { return t.GetHold(ctx, id) }

func (t *tx) InsertOrder(ctx context.Context, o allot.Order) error {
	minor, scale, cur := rowcodec.Money(o.Total)
	_, err := t.db.ExecContext(ctx, `INSERT INTO orders (`+orderCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		o.ID, string(o.Status), o.CustomerID, o.HoldID, rowcodec.OrderLines(o.Lines), minor, scale, cur, micros(o.CreatedAt), micros(o.UpdatedAt), rowcodec.Payment(o.Payment))
	if err != nil {
		return err
	}
	for i, h := range o.History {
		if err := t.transition(ctx, o.ID, i+1, h); err != nil {
			return err
		}
	}
	return nil
}

func (t *tx) transition(ctx context.Context, orderID string, seq int, tr allot.Transition) error {
	_, err := t.db.ExecContext(ctx, `INSERT INTO order_transitions (order_id, seq, from_status, to_status, cause, at) VALUES (?, ?, ?, ?, ?, ?)`,
		orderID, seq, string(tr.From), string(tr.To), tr.Cause, micros(tr.At))
	return err
}

func (t *tx) LockOrder(ctx context.Context, id string) (allot.Order, error) {
	return t.GetOrder(ctx, id)
}

func (t *tx) SetOrderStatus(ctx context.Context, id string, tr allot.Transition) error {
	res, err := t.db.ExecContext(ctx, `UPDATE orders SET status = ?, updated_at = ? WHERE id = ?`, string(tr.To), micros(tr.At), id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return allot.ErrNotFound
	}
	var seq int
	if err := t.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) + 1 FROM order_transitions WHERE order_id = ?`, id).Scan(&seq); err != nil {
		return err
	}
	return t.transition(ctx, id, seq, tr)
}

func (t *tx) AppendEvents(ctx context.Context, es []allot.Event) error {
	// Events keep their order: one table's rows are inserted in the order
	// they were added, so seq follows it.
	for _, e := range es {
		var no any // NULL: numbered later (OwnNumberer)
		if e.ChangeNo != 0 {
			no = e.ChangeNo
		}
		t.buf.add("events", `INSERT INTO events (id, type, resource_id, order_id, hold_id, at, payload, change_no) VALUES `, 8,
			e.ID, e.Type, e.ResourceID, e.OrderID, e.HoldID, micros(e.At), string(e.Payload), no)
	}
	return nil
}

// Unsequenced uses the partial index of events without a number, which is
// empty but for a backlog.
func (t *tx) Unsequenced(ctx context.Context) (bool, error) {
	var n int
	err := t.db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM events WHERE change_no IS NULL)`).Scan(&n)
	return n == 1, err
}

// LockSequencer: SQLite has one writer, so a write transaction already is
// the only sequencer.
func (t *tx) LockSequencer(ctx context.Context) (bool, error) { return true, nil }

func (t *tx) UnsequencedEvents(ctx context.Context, limit int) ([]allot.Event, error) {
	return t.events(ctx, `SELECT seq, 0, id, type, resource_id, order_id, hold_id, at, payload FROM events WHERE change_no IS NULL ORDER BY seq LIMIT ?`, limit)
}

func (t *tx) LastChangeNumber(ctx context.Context) (int64, error) {
	var n int64
	err := t.db.QueryRowContext(ctx, `SELECT value FROM counters WHERE name = 'change_no'`).Scan(&n)
	return n, err
}

func (t *tx) Sequence(ctx context.Context, seqs, changeNos []int64, items []allot.FeedItem, opps []allot.OpportunityChange) error {
	var last int64
	for _, no := range changeNos {
		last = max(last, no)
	}
	// A run of consecutive seqs numbered consecutively (the usual case: one
	// writer, committed in order) is one range UPDATE, not one per event.
	for i := 0; i < len(seqs); {
		j := i + 1
		for j < len(seqs) && seqs[j] == seqs[j-1]+1 && changeNos[j] == changeNos[j-1]+1 {
			j++
		}
		res, err := t.db.ExecContext(ctx, `UPDATE events SET change_no = seq + ? WHERE seq BETWEEN ? AND ? AND change_no IS NULL`,
			changeNos[i]-seqs[i], seqs[i], seqs[j-1])
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != int64(j-i) {
			return fmt.Errorf("sqlite: events %d-%d were numbered by another sequencer", seqs[i], seqs[j-1])
		}
		last = max(last, changeNos[j-1])
		i = j
	}
	for _, it := range items {
		state := "updated"
		if it.Deleted {
			state = "deleted"
		}
		if _, err := t.db.ExecContext(ctx, `INSERT INTO order_feed (order_id, change_no, modified, state, data) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (order_id) DO UPDATE SET change_no = excluded.change_no, modified = excluded.modified, state = excluded.state, data = excluded.data`,
			it.ID, it.ChangeNo, micros(it.Modified), state, string(it.Data)); err != nil {
			return err
		}
	}
	for _, o := range opps {
		last = max(last, o.ChangeNo)
		if _, err := t.db.ExecContext(ctx, `INSERT INTO opportunity_feed (resource_id, bkey, change_no, modified, deleted) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (resource_id, bkey) DO UPDATE SET change_no = excluded.change_no, modified = excluded.modified,
				deleted = opportunity_feed.deleted OR excluded.deleted`,
			o.ResourceID, o.Key, o.ChangeNo, micros(o.Modified), o.Deleted); err != nil {
			return err
		}
	}
	if last == 0 {
		return nil
	}
	_, err := t.db.ExecContext(ctx, `UPDATE counters SET value = ? WHERE name = 'change_no' AND value < ?`, last, last)
	return err
}

func (t *tx) CompleteIdempotencyKey(ctx context.Context, key, token string, status int, body []byte) error {
	res, err := t.db.ExecContext(ctx, `UPDATE idempotency_keys SET done = 1, status = ?, body = ? WHERE key = ? AND token = ? AND done = 0`, status, body, key, token)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return allot.ErrIdempotencyLost
	}
	return nil
}

// SerialWrites: SQLite has one writer at a time.
func (s *Store) SerialWrites() {}

// Savepoint runs fn inside a SAVEPOINT and rolls back to it if fn fails.
func (t *tx) Savepoint(ctx context.Context, fn func() error) (failed, err error) {
	// The statement flushes what the transaction buffered before fn, so
	// that none of it is inside the savepoint.
	if _, err := t.db.ExecContext(ctx, `SAVEPOINT allot_part`); err != nil {
		return nil, err
	}
	before := t.buf.err
	if failed = fn(); failed != nil {
		// What fn buffered is dropped unwritten, and a write of fn's that
		// failed is undone with the rest: the transaction goes on.
		t.buf.discard()
		t.buf.err = before
		if _, err := t.buf.c.ExecContext(ctx, `ROLLBACK TO allot_part`); err != nil {
			return failed, err
		}
	}
	_, err = t.db.ExecContext(ctx, `RELEASE allot_part`)
	return failed, err
}
