package sqlite

import (
	"context"
	"database/sql"
	"strings"
)

// A batch's holds, claims and events are inserted as multi-row INSERTs
// when the transaction next reads or commits, rather than a statement per
// row: in the pure-Go SQLite each statement's overhead (database/sql,
// binding, the VM's set-up) rivals the b-tree work itself.

// pending is the rows of one table waiting to be inserted.
type pending struct {
	head string // INSERT INTO t (cols) VALUES
	cols int
	rows [][]any
}

// buffered is a transaction's querier: it flushes the pending rows before
// any statement, so that the transaction always reads its own writes.
type buffered struct {
	c     cached
	order []*pending
	byTbl map[string]*pending
	// err is the first failed flush: the transaction's real failure, which
	// Write returns whatever its caller made of the read that hit it.
	err error
}

func (b *buffered) add(table, head string, cols int, row ...any) {
	p := b.byTbl[table]
	if p == nil {
		p = &pending{head: head, cols: cols}
		if b.byTbl == nil {
			b.byTbl = map[string]*pending{}
		}
		b.byTbl[table] = p
		b.order = append(b.order, p)
	}
	p.rows = append(p.rows, row)
}

// chunks are the multi-row statement sizes used: few distinct SQL texts, so
// the statement cache stays small.
var chunks = []int{64, 16, 4, 1}

func (b *buffered) flush(ctx context.Context) error {
	for _, p := range b.order {
		rows := p.rows
		for len(rows) > 0 {
			n := 1
			for _, c := range chunks {
				if len(rows) >= c {
					n = c
					break
				}
			}
			tuple := "(" + strings.TrimSuffix(strings.Repeat("?, ", p.cols), ", ") + ")"
			query := p.head + strings.TrimSuffix(strings.Repeat(tuple+", ", n), ", ")
			args := make([]any, 0, n*p.cols)
			for _, r := range rows[:n] {
				args = append(args, r...)
			}
			if _, err := b.c.ExecContext(ctx, query, args...); err != nil {
				if b.err == nil {
					b.err = err
				}
				return err
			}
			rows = rows[n:]
		}
		p.rows = p.rows[:0]
	}
	return nil
}

// discard drops the rows not yet written.
func (b *buffered) discard() {
	for _, p := range b.order {
		p.rows = p.rows[:0]
	}
}

func (b *buffered) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	return b.c.ExecContext(ctx, query, args...)
}

func (b *buffered) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	return b.c.QueryContext(ctx, query, args...)
}

func (b *buffered) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if err := b.flush(ctx); err != nil {
		cctx, cancel := context.WithCancelCause(ctx)
		cancel(err)
		return b.c.tx.QueryRowContext(cctx, query, args...)
	}
	return b.c.QueryRowContext(ctx, query, args...)
}
