package postgres

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/allot/allot"
	"github.com/allot/allot/store/internal/rowcodec"
)

func (s *Store) InsertWebhook(ctx context.Context, w allot.Webhook) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO webhooks (id, url, secret, event_types, cursor, created_at) VALUES ($1, $2, $3, $4, $5, $6)`,
		w.ID, w.URL, w.Secret, strings.Join(w.EventTypes, ","), w.Cursor, w.CreatedAt)
	return err
}

const webhookCols = `id, url, secret, event_types, cursor, created_at`

func scanWebhook(sc pgx.Row) (allot.Webhook, error) {
	var w allot.Webhook
	var types string
	if err := sc.Scan(&w.ID, &w.URL, &w.Secret, &types, &w.Cursor, &w.CreatedAt); err != nil {
		return w, notFound(err)
	}
	w.EventTypes, w.CreatedAt = rowcodec.Types(types), w.CreatedAt.UTC()
	return w, nil
}

func (s *Store) GetWebhook(ctx context.Context, id string) (allot.Webhook, error) {
	return scanWebhook(s.pool.QueryRow(ctx, `SELECT `+webhookCols+` FROM webhooks WHERE id = $1`, id))
}

func (s *Store) ListWebhooks(ctx context.Context) ([]allot.Webhook, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+webhookCols+` FROM webhooks ORDER BY id`)
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
	// Deliveries go with it (ON DELETE CASCADE).
	tag, err := s.pool.Exec(ctx, `DELETE FROM webhooks WHERE id = $1`, id)
	if err == nil && tag.RowsAffected() == 0 {
		return allot.ErrNotFound
	}
	return err
}

func (s *Store) AddDeliveries(ctx context.Context, webhookID string, ds []allot.Delivery, cursor int64) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if len(ds) > 0 {
			ids, events, types, bodies := make([]string, len(ds)), make([]string, len(ds)), make([]string, len(ds)), make([]string, len(ds))
			nos := make([]int64, len(ds))
			nexts, created := make([]time.Time, len(ds)), make([]time.Time, len(ds))
			for i, d := range ds {
				ids[i], events[i], types[i], bodies[i], nos[i], nexts[i], created[i] = d.ID, d.EventID, d.EventType, string(d.Body), d.ChangeNo, d.NextAttemptAt, d.CreatedAt
			}
			if _, err := tx.Exec(ctx, `INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, change_no, body, status, next_attempt_at, created_at)
				SELECT v.id, $1, v.e, v.t, v.n, v.b, 'pending', v.na, v.c
				FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::timestamptz[], $8::timestamptz[]) AS v(id, e, t, n, b, na, c)
				ON CONFLICT (webhook_id, event_id) DO NOTHING`, webhookID, ids, events, types, nos, bodies, nexts, created); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `UPDATE webhooks SET cursor = $1 WHERE id = $2 AND cursor < $1`, cursor, webhookID)
		return err
	})
}

const deliveryCols = `id, webhook_id, event_id, event_type, change_no, body, status, attempts, next_attempt_at, created_at, last_status, last_error`

func scanDelivery(sc pgx.Row) (allot.Delivery, error) {
	var d allot.Delivery
	var body string
	if err := sc.Scan(&d.ID, &d.WebhookID, &d.EventID, &d.EventType, &d.ChangeNo, &body, &d.Status, &d.Attempts, &d.NextAttemptAt, &d.CreatedAt, &d.LastStatus, &d.LastError); err != nil {
		return d, notFound(err)
	}
	d.Body, d.NextAttemptAt, d.CreatedAt = []byte(body), d.NextAttemptAt.UTC(), d.CreatedAt.UTC()
	return d, nil
}

func collectDeliveries(rows pgx.Rows, err error) ([]allot.Delivery, error) {
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

// ClaimDeliveries leases due deliveries; SKIP LOCKED lets several nodes
// claim at once without taking the same one.
func (s *Store) ClaimDeliveries(ctx context.Context, now, leaseUntil time.Time, limit int) ([]allot.Delivery, error) {
	return collectDeliveries(s.pool.Query(ctx, `UPDATE webhook_deliveries SET next_attempt_at = $1
		WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $2
		             ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
		RETURNING `+deliveryCols, leaseUntil, now, limit))
}

func (s *Store) UpdateDelivery(ctx context.Context, d allot.Delivery, leased time.Time) error {
	var lease *time.Time
	if !leased.IsZero() {
		lease = &leased
	}
	tag, err := s.pool.Exec(ctx, `UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at = $3, last_status = $4, last_error = $5
		WHERE id = $6 AND ($7::timestamptz IS NULL OR next_attempt_at = $7)`,
		string(d.Status), d.Attempts, d.NextAttemptAt, d.LastStatus, d.LastError, d.ID, lease)
	if err == nil && tag.RowsAffected() == 0 {
		return allot.ErrNotFound
	}
	return err
}

func (s *Store) GetDelivery(ctx context.Context, id string) (allot.Delivery, error) {
	return scanDelivery(s.pool.QueryRow(ctx, `SELECT `+deliveryCols+` FROM webhook_deliveries WHERE id = $1`, id))
}

func (s *Store) ListDeliveries(ctx context.Context, webhookID string, status allot.DeliveryStatus, limit int) ([]allot.Delivery, error) {
	if status == "" {
		return collectDeliveries(s.pool.Query(ctx, `SELECT `+deliveryCols+` FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY change_no DESC LIMIT $2`, webhookID, limit))
	}
	return collectDeliveries(s.pool.Query(ctx, `SELECT `+deliveryCols+` FROM webhook_deliveries WHERE webhook_id = $1 AND status = $2 ORDER BY change_no DESC LIMIT $3`, webhookID, string(status), limit))
}
