package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/allot/allot"
	"github.com/allot/allot/store/internal/rowcodec"
)

func (q q) GetCustomer(ctx context.Context, id string) (allot.Customer, error) {
	var c allot.Customer
	err := q.db.QueryRow(ctx, `SELECT id, name, email, created_at FROM customers WHERE id = $1`, id).Scan(&c.ID, &c.Name, &c.Email, &c.CreatedAt)
	c.CreatedAt = c.CreatedAt.UTC()
	return c, notFound(err)
}

func (t *tx) InsertCustomer(ctx context.Context, c allot.Customer) error {
	// ON CONFLICT rather than catching 23505, which would abort the
	// transaction the engine commits refusals in.
	tag, err := t.db.Exec(ctx, `INSERT INTO customers (id, name, email, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, c.ID, c.Name, c.Email, c.CreatedAt)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return allot.ErrConflict
	}
	return nil
}

// Pool is the store's connection pool (a job queue shares it).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// PgxTx is the transaction under t as a pgx.Tx, for a job queue that
// enqueues in it (River's InsertTx), so that a step is scheduled exactly when
// the change that calls for it commits. Statements through it first flush
// what t has queued, so they run in order, inside t; the transaction's end
// stays t's own.
func (t *tx) PgxTx() pgx.Tx { return pgxTx{t} }

type pgxTx struct{ t *tx }

var errNotOurs = errors.New("postgres: the store's transaction ends with its Write")

func (p pgxTx) Begin(context.Context) (pgx.Tx, error) { return nil, errNotOurs }
func (p pgxTx) Commit(context.Context) error          { return errNotOurs }
func (p pgxTx) Rollback(context.Context) error        { return errNotOurs }
func (p pgxTx) LargeObjects() pgx.LargeObjects        { return pgx.LargeObjects{} }
func (p pgxTx) Conn() *pgx.Conn                       { return p.t.conn }

func (p pgxTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if err := p.t.flush(ctx); err != nil {
		return 0, err
	}
	return p.t.conn.CopyFrom(ctx, table, cols, src)
}

func (p pgxTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := p.t.flush(ctx); err != nil {
		return errBatch{err}
	}
	return p.t.conn.SendBatch(ctx, b)
}

func (p pgxTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := p.t.flush(ctx); err != nil {
		return nil, err
	}
	return p.t.conn.Prepare(ctx, name, sql)
}

func (p pgxTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return flushing{p.t}.Exec(ctx, sql, args...)
}

func (p pgxTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return flushing{p.t}.Query(ctx, sql, args...)
}

func (p pgxTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return flushing{p.t}.QueryRow(ctx, sql, args...)
}

type errBatch struct{ err error }

func (e errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, e.err }
func (e errBatch) Query() (pgx.Rows, error)         { return nil, e.err }
func (e errBatch) QueryRow() pgx.Row                { return errRow{e.err} }
func (e errBatch) Close() error                     { return e.err }

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

func (e errBatch) Tx() pgx.Tx { return nil }

func (q q) OpportunityChanges(ctx context.Context, afterChange int64, limit int) ([]allot.OpportunityChange, error) {
	rows, err := q.db.Query(ctx, `SELECT resource_id, bkey, change_no, modified, deleted FROM opportunity_feed WHERE change_no > $1 ORDER BY change_no LIMIT $2`, afterChange, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.OpportunityChange
	for rows.Next() {
		var o allot.OpportunityChange
		if err := rows.Scan(&o.ResourceID, &o.Key, &o.ChangeNo, &o.Modified, &o.Deleted); err != nil {
			return nil, err
		}
		o.Modified = o.Modified.UTC()
		out = append(out, o)
	}
	return out, rows.Err()
}

func (t *tx) ReplaceHold(ctx context.Context, h allot.Hold) error {
	t.queue(nil, `INSERT INTO holds (`+holdCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (id) DO UPDATE SET status = excluded.status, customer_id = excluded.customer_id, expires_at = excluded.expires_at,
		created_at = excluded.created_at, order_id = excluded.order_id, lines = excluded.lines`,
		h.ID, string(h.Status), h.CustomerID, h.ExpiresAt, h.CreatedAt, h.OrderID, rowcodec.Lines(h.Lines))
	return nil
}
