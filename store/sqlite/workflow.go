package sqlite

import (
	"context"
	"database/sql"

	"github.com/allot/allot"
	"github.com/allot/allot/store/internal/rowcodec"
)

func (q q) GetCustomer(ctx context.Context, id string) (allot.Customer, error) {
	var c allot.Customer
	var created int64
	err := q.db.QueryRowContext(ctx, `SELECT id, name, email, created_at FROM customers WHERE id = ?`, id).Scan(&c.ID, &c.Name, &c.Email, &created)
	c.CreatedAt = fromMicros(created)
	return c, notFound(err)
}

func (t *tx) InsertCustomer(ctx context.Context, c allot.Customer) error {
	_, err := t.db.ExecContext(ctx, `INSERT INTO customers (id, name, email, created_at) VALUES (?, ?, ?, ?)`, c.ID, c.Name, c.Email, micros(c.CreatedAt))
	if isConflict(err) {
		return allot.ErrConflict
	}
	return err
}

// SQLTx is the transaction under t, for a job queue that enqueues in it
// (River's InsertTx), so that a step is scheduled exactly when the change
// that calls for it commits.
func (t *tx) SQLTx() *sql.Tx {
	// River's statements go straight to the transaction: what is buffered
	// goes first.
	if err := t.buf.flush(context.Background()); err != nil {
		t.buf.c.tx.Rollback() // the write fails at its next statement
	}
	return t.buf.c.tx
}

// DB is the single writer connection pool: a job queue on the same file
// must share it, because SQLite has one writer at a time.
func (s *Store) DB() *sql.DB { return s.w }

func (q q) OpportunityChanges(ctx context.Context, afterChange int64, limit int) ([]allot.OpportunityChange, error) {
	rows, err := q.db.QueryContext(ctx, `SELECT resource_id, bkey, change_no, modified, deleted FROM opportunity_feed WHERE change_no > ? ORDER BY change_no LIMIT ?`, afterChange, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.OpportunityChange
	for rows.Next() {
		var o allot.OpportunityChange
		var mod int64
		if err := rows.Scan(&o.ResourceID, &o.Key, &o.ChangeNo, &mod, &o.Deleted); err != nil {
			return nil, err
		}
		o.Modified = fromMicros(mod)
		out = append(out, o)
	}
	return out, rows.Err()
}

func (t *tx) ReplaceHold(ctx context.Context, h allot.Hold) error {
	_, err := t.db.ExecContext(ctx, `INSERT INTO holds (`+holdCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET status = excluded.status, customer_id = excluded.customer_id, expires_at = excluded.expires_at,
		created_at = excluded.created_at, order_id = excluded.order_id, lines = excluded.lines`,
		h.ID, string(h.Status), h.CustomerID, micros(h.ExpiresAt), micros(h.CreatedAt), h.OrderID, rowcodec.Lines(h.Lines))
	return err
}
