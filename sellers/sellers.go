// Package sellers asks sellers to make bookings (allot.Sellers): Auto
// accepts everything, HTTP asks a seller's endpoint.
package sellers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/allot/allot"
)

// Auto confirms every booking at once: for development and for sellers
// that need no confirmation.
type Auto struct{}

var _ allot.Sellers = Auto{}

// Confirm accepts r.
func (Auto) Confirm(context.Context, allot.SellerRequest) (allot.SellerAnswer, error) {
	return allot.SellerAnswer{Decision: allot.SellerAccepted, Reason: "auto-confirmed"}, nil
}

// Manual leaves every booking to the seller's later answer at
// POST /v1/orders/{id}/seller-decision (a seller who confirms by hand, in an
// extranet); an order nobody answers is rejected after the seller timeout.
type Manual struct{}

var _ allot.Sellers = Manual{}

// Confirm answers pending.
func (Manual) Confirm(context.Context, allot.SellerRequest) (allot.SellerAnswer, error) {
	return allot.SellerAnswer{Decision: allot.SellerPending}, nil
}

// DefaultTimeout bounds a request of an HTTP seller whose Client is nil.
const DefaultTimeout = 10 * time.Second

// defaultClient is HTTP's client when Client is nil. It does not follow
// redirects: a 301-303 would turn the POST into a GET.
var defaultClient = &http.Client{
	Timeout:       DefaultTimeout,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// HTTP asks a seller's endpoint: it POSTs the JSON allot.SellerRequest to
// URL with the headers Idempotency-Key (r.Key), Authorization: Bearer Token
// (when Token is set) and Content-Type: application/json.
//
// The seller answers
//   - 200 with {"decision":"accepted"|"rejected"|"pending","reason":…,"reference":…}:
//     that answer;
//   - 202 (any body): pending; the seller answers later at Allot's
//     seller-decision endpoint;
//   - 4xx (but 408, 425 and 429, which ask to retry later): a *StatusError
//     wrapping allot.ErrPermanent.
//
// Anything else (5xx, another status, a malformed 200 body or an unknown
// decision, a network error, ctx's expiry) is a transient error.
type HTTP struct {
	URL   string
	Token string
	// Client sends the requests; nil means a client with DefaultTimeout
	// that does not follow redirects.
	Client *http.Client
}

var _ allot.Sellers = HTTP{}

// StatusError is a seller's answer with an unexpected or failure status.
type StatusError struct {
	StatusCode int
	Body       string // the body's first 512 bytes
}

func (e *StatusError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("sellers: seller answered %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	return fmt.Sprintf("sellers: seller answered %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Body)
}

// Permanent reports whether retrying cannot help: a 4xx other than 408
// (timeout), 425 (too early) and 429 (too many requests).
func (e *StatusError) Permanent() bool {
	switch e.StatusCode {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return false
	}
	return e.StatusCode >= 400 && e.StatusCode < 500
}

// Unwrap is allot.ErrPermanent when e is permanent.
func (e *StatusError) Unwrap() error {
	if e.Permanent() {
		return allot.ErrPermanent
	}
	return nil
}

const (
	maxErrorBody  = 512
	maxAnswerBody = 1 << 20
)

// Confirm asks the seller to make the booking of r.Order.
func (h HTTP) Confirm(ctx context.Context, r allot.SellerRequest) (allot.SellerAnswer, error) {
	if r.Key == "" {
		return allot.SellerAnswer{}, fmt.Errorf("sellers: %w: request for order %q has no key", allot.ErrPermanent, r.Order.ID)
	}
	for i := 0; i < len(r.Key); i++ {
		if c := r.Key[i]; c < 0x20 || c == 0x7f {
			return allot.SellerAnswer{}, fmt.Errorf("sellers: %w: key %q has a control character", allot.ErrPermanent, r.Key)
		}
	}
	body, err := json.Marshal(r)
	if err != nil {
		return allot.SellerAnswer{}, fmt.Errorf("sellers: %w: %w", allot.ErrPermanent, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		// A malformed URL: configuration, which a restart can fix.
		return allot.SellerAnswer{}, fmt.Errorf("sellers: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Idempotency-Key", r.Key)
	if h.Token != "" {
		req.Header.Set("Authorization", "Bearer "+h.Token)
	}
	client := h.Client
	if client == nil {
		client = defaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return allot.SellerAnswer{}, fmt.Errorf("sellers: %w", err)
	}
	defer func() {
		// Drain a little so that the connection can be reused.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()

	switch resp.StatusCode {
	case http.StatusOK:
		var a allot.SellerAnswer
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswerBody)).Decode(&a); err != nil {
			return allot.SellerAnswer{}, fmt.Errorf("sellers: malformed answer: %w", err)
		}
		switch a.Decision {
		case allot.SellerAccepted, allot.SellerRejected, allot.SellerPending:
			return a, nil
		}
		return allot.SellerAnswer{}, fmt.Errorf("sellers: unknown decision %q", a.Decision)
	case http.StatusAccepted:
		// The body may carry a reason or reference; it need not.
		var a allot.SellerAnswer
		_ = json.NewDecoder(io.LimitReader(resp.Body, maxAnswerBody)).Decode(&a)
		return allot.SellerAnswer{Decision: allot.SellerPending, Reason: a.Reason, Reference: a.Reference}, nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil && !errors.Is(err, io.EOF) {
		b = append(b, fmt.Sprintf(" (reading the body: %v)", err)...)
	}
	return allot.SellerAnswer{}, &StatusError{StatusCode: resp.StatusCode, Body: string(b)}
}
