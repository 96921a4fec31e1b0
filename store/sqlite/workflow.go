package sqlite

import (
	"context"
	"database/sql"

	"github.com/allot/allot"
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
func (t *tx) SQLTx() *sql.Tx { return t.db.(cached).tx }

// DB is the single writer connection pool: a job queue on the same file
// must share it, because SQLite has one writer at a time.
func (s *Store) DB() *sql.DB { return s.w }
