// Package rowcodec turns domain values into column values and back, the
// same way for every SQL store (lines as JSON, money as minor units and
// scale), so that both stores read each other's rows alike.
package rowcodec

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/allot/allot"
)

// Lines encodes a hold's lines.
func Lines(ls []allot.Line) string { return mustJSON(ls) }

// OrderLines encodes an order's lines.
func OrderLines(ls []allot.OrderLine) string { return mustJSON(ls) }

// DecodeLines decodes what Lines or OrderLines wrote.
func DecodeLines[T allot.Line | allot.OrderLine](s string) ([]T, error) {
	var out []T
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return nil, fmt.Errorf("decoding stored lines: %w", err)
	}
	return out, nil
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("rowcodec: %T does not marshal: %v", v, err))
	}
	return string(b)
}

// Money splits an optional amount into nullable columns.
func Money(m *allot.Money) (minor sql.NullInt64, scale sql.NullInt64, currency sql.NullString) {
	if m == nil {
		return
	}
	return sql.NullInt64{Int64: m.Minor, Valid: true}, sql.NullInt64{Int64: int64(m.Scale), Valid: true}, sql.NullString{String: m.Currency, Valid: true}
}

// DecodeMoney joins the columns Money wrote.
func DecodeMoney(minor, scale sql.NullInt64, currency sql.NullString) *allot.Money {
	if !minor.Valid {
		return nil
	}
	return &allot.Money{Minor: minor.Int64, Scale: int(scale.Int64), Currency: currency.String}
}

// Types decodes a webhook's comma-separated event types.
func Types(s string) []string {
	if s == "" {
		return []string{}
	}
	return strings.Split(s, ",")
}

// Payment encodes an order's payment choice ("" for none).
func Payment(p *allot.OrderPayment) string {
	if p == nil {
		return ""
	}
	return mustJSON(p)
}

// DecodePayment decodes what Payment wrote.
func DecodePayment(s string) (*allot.OrderPayment, error) {
	if s == "" {
		return nil, nil
	}
	var p allot.OrderPayment
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return nil, fmt.Errorf("decoding stored payment: %w", err)
	}
	return &p, nil
}
