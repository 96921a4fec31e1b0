package payments

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/webhook"
)

// Callback is a provider's final answer, posted to Allot's
// POST /v1/payments/{provider}/callback. Deliveries may repeat.
type Callback struct {
	ID        string              `json:"id"`   // unique per event, the same on every retry of it
	Kind      string              `json:"kind"` // "charge" or "refund"
	Key       string              `json:"key"`  // the charge's idempotency key
	OrderID   string              `json:"order_id"`
	PaymentID string              `json:"payment_id,omitempty"`
	Status    allot.PaymentStatus `json:"status"`
	Reason    string              `json:"reason,omitempty"`
}

// SignatureHeader carries the callback's signature, in webhook.Sign's format.
const SignatureHeader = "Payment-Signature"

// CallbackTolerance is how far a callback's timestamp may be from now.
const CallbackTolerance = 5 * time.Minute

var (
	// ErrBadSignature: the signature is missing, malformed, wrong or stale (answer 401).
	ErrBadSignature = errors.New("payments: bad callback signature")
	// ErrBadCallback: the signed body is not a valid Callback (answer 400).
	ErrBadCallback = errors.New("payments: bad callback")
)

// SignCallback returns the SignatureHeader value for body at time t.
func SignCallback(secret string, t time.Time, body []byte) string {
	return webhook.Sign(secret, t, body)
}

// ParseCallback verifies body's signature and decodes it strictly. Its
// errors wrap ErrBadSignature or ErrBadCallback.
func ParseCallback(secret, header string, body []byte, now time.Time) (Callback, error) {
	if secret == "" {
		// An empty key would let anyone sign.
		return Callback{}, fmt.Errorf("%w: no callback secret is configured", ErrBadSignature)
	}
	if err := webhook.Verify(secret, header, body, now, CallbackTolerance); err != nil {
		return Callback{}, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	var cb Callback
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cb); err != nil {
		return Callback{}, fmt.Errorf("%w: %v", ErrBadCallback, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Callback{}, fmt.Errorf("%w: data after the JSON object", ErrBadCallback)
	}
	for _, f := range []struct{ name, v string }{{"id", cb.ID}, {"kind", cb.Kind}, {"key", cb.Key}, {"order_id", cb.OrderID}, {"status", string(cb.Status)}} {
		if f.v == "" {
			return Callback{}, fmt.Errorf("%w: %s is required", ErrBadCallback, f.name)
		}
	}
	switch {
	case cb.Kind == "charge" && (cb.Status == allot.PaymentSucceeded || cb.Status == allot.PaymentDeclined):
	case cb.Kind == "refund" && (cb.Status == allot.PaymentSucceeded || cb.Status == allot.PaymentDeclined || cb.Status == allot.PaymentNothingToRefund):
	case cb.Kind != "charge" && cb.Kind != "refund":
		return Callback{}, fmt.Errorf("%w: kind %q is not \"charge\" or \"refund\"", ErrBadCallback, cb.Kind)
	default:
		return Callback{}, fmt.Errorf("%w: status %q is not a final status for a %s", ErrBadCallback, cb.Status, cb.Kind)
	}
	return cb, nil
}
