package sqlite

import (
	"context"
	"database/sql"

	"strings"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/store/internal/rowcodec"
)

func (s *Store) InsertWebhook(ctx context.Context, w allot.Webhook) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO webhooks (id, url, secret, event_types, cursor, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
		w.ID, w.URL, w.Secret, strings.Join(w.EventTypes, ","), w.Cursor, micros(w.CreatedAt))
	return err
}

const webhookCols = `id, url, secret, event_types, cursor, created_at`

func scanWebhook(sc interface{ Scan(...any) error }) (allot.Webhook, error) {
	var w allot.Webhook
	var types string
	var created int64
	if err := sc.Scan(&w.ID, &w.URL, &w.Secret, &types, &w.Cursor, &created); err != nil {
		return w, notFound(err)
	}
	w.EventTypes, w.CreatedAt = rowcodec.Types(types), fromMicros(created)
	return w, nil
}

func (s *Store) GetWebhook(ctx context.Context, id string) (allot.Webhook, error) {
	return scanWebhook(s.r.QueryRowContext(ctx, `SELECT `+webhookCols+` FROM webhooks WHERE id = ?`, id))
}

func (s *Store) ListWebhooks(ctx context.Context) ([]allot.Webhook, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+webhookCols+` FROM webhooks ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.Webhook
	for rows.Next() {
		w, err := scanWebhook(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

func (s *Store) DeleteWebhook(ctx context.Context, id string) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM webhook_deliveries WHERE webhook_id = ?`, id); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM webhooks WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return allot.ErrNotFound
		}
		return nil
	})
}

func (s *Store) AddDeliveries(ctx context.Context, webhookID string, ds []allot.Delivery, cursor int64) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		for _, d := range ds {
			if _, err := tx.ExecContext(ctx, `INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, change_no, body, status, next_attempt_at, created_at)
				VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (webhook_id, event_id) DO NOTHING`,
				d.ID, webhookID, d.EventID, d.EventType, d.ChangeNo, string(d.Body), micros(d.NextAttemptAt), micros(d.CreatedAt)); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `UPDATE webhooks SET cursor = ? WHERE id = ? AND cursor < ?`, cursor, webhookID, cursor)
		return err
	})
}

const deliveryCols = `id, webhook_id, event_id, event_type, change_no, body, status, attempts, next_attempt_at, created_at, last_status, last_error`

func scanDelivery(sc interface{ Scan(...any) error }) (allot.Delivery, error) {
	var d allot.Delivery
	var body string
	var next, created int64
	if err := sc.Scan(&d.ID, &d.WebhookID, &d.EventID, &d.EventType, &d.ChangeNo, &body, &d.Status, &d.Attempts, &next, &created, &d.LastStatus, &d.LastError); err != nil {
		return d, notFound(err)
	}
	d.Body, d.NextAttemptAt, d.CreatedAt = []byte(body), fromMicros(next), fromMicros(created)
	return d, nil
}

func collectDeliveries(rows *sql.Rows, err error) ([]allot.Delivery, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []allot.Delivery
	for rows.Next() {
		d, err := scanDelivery(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// ClaimDeliveries leases due deliveries by moving their next attempt past
// the lease; SQLite's single writer makes the claim atomic.
func (s *Store) ClaimDeliveries(ctx context.Context, now, leaseUntil time.Time, limit int) ([]allot.Delivery, error) {
	var out []allot.Delivery
	err := s.write(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = collectDeliveries(tx.QueryContext(ctx, `UPDATE webhook_deliveries SET next_attempt_at = ?
			WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)
			RETURNING `+deliveryCols, micros(leaseUntil), micros(now), limit))
		return err
	})
	return out, err
}

func (s *Store) UpdateDelivery(ctx context.Context, d allot.Delivery, leased time.Time) error {
	var lease any // NULL: unconditional
	if !leased.IsZero() {
		lease = micros(leased)
	}
	res, err := s.w.ExecContext(ctx, `UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_status = ?, last_error = ?
		WHERE id = ? AND (?7 IS NULL OR next_attempt_at = ?7)`,
		string(d.Status), d.Attempts, micros(d.NextAttemptAt), d.LastStatus, d.LastError, d.ID, lease)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return allot.ErrNotFound
	}
	return nil
}

func (s *Store) GetDelivery(ctx context.Context, id string) (allot.Delivery, error) {
	return scanDelivery(s.r.QueryRowContext(ctx, `SELECT `+deliveryCols+` FROM webhook_deliveries WHERE id = ?`, id))
}

func (s *Store) ListDeliveries(ctx context.Context, webhookID string, status allot.DeliveryStatus, limit int) ([]allot.Delivery, error) {
	if status == "" {
		return collectDeliveries(s.r.QueryContext(ctx, `SELECT `+deliveryCols+` FROM webhook_deliveries WHERE webhook_id = ? ORDER BY change_no DESC LIMIT ?`, webhookID, limit))
	}
	return collectDeliveries(s.r.QueryContext(ctx, `SELECT `+deliveryCols+` FROM webhook_deliveries WHERE webhook_id = ? AND status = ? ORDER BY change_no DESC LIMIT ?`, webhookID, string(status), limit))
}
