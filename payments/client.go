package payments

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/allot/allot"
)

// Client is allot.Payments over HTTP against a provider like Server. A 4xx
// answer is permanent (except 408, 409, 425 and 429, which ask for a retry);
// 5xx, network errors and ctx ending are transient.
type Client struct {
	BaseURL string
	// HTTP sends the requests (a client with a 30s timeout).
	HTTP *http.Client
}

// A redirect is not an answer: followed, a POST becomes a GET without the
// payment, and whatever that GET answered (a 200, a 4xx) would be taken for
// the payment's outcome.
var defaultClient = &http.Client{Timeout: 30 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// Charge posts r to BaseURL/charges.
func (c Client) Charge(ctx context.Context, r allot.PaymentRequest) (allot.PaymentResult, error) {
	res, err := c.do(ctx, "/charges", r)
	if err == nil && res.Status == allot.PaymentNothingToRefund {
		return allot.PaymentResult{}, fmt.Errorf("payment provider answered a charge with status %q", res.Status)
	}
	return res, err
}

// Refund posts r to BaseURL/refunds.
func (c Client) Refund(ctx context.Context, r allot.PaymentRequest) (allot.PaymentResult, error) {
	return c.do(ctx, "/refunds", r)
}

func (c Client) do(ctx context.Context, path string, r allot.PaymentRequest) (allot.PaymentResult, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return allot.PaymentResult{}, fmt.Errorf("%w: encoding the payment request: %v", allot.ErrPermanent, err)
	}
	req, err := http.NewRequestWithContext(ctx, "POST", strings.TrimRight(c.BaseURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return allot.PaymentResult{}, fmt.Errorf("%w: %v", allot.ErrPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", r.Key)
	hc := c.HTTP
	if hc == nil {
		hc = defaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return allot.PaymentResult{}, fmt.Errorf("payment provider %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return allot.PaymentResult{}, fmt.Errorf("payment provider %s: reading the answer: %w", path, err)
	}
	switch code := resp.StatusCode; {
	case code/100 == 2:
	case code == 408 || code == 409 || code == 425 || code == 429 || code >= 500:
		return allot.PaymentResult{}, fmt.Errorf("payment provider %s answered %d: %s", path, code, snippet(b))
	default:
		return allot.PaymentResult{}, fmt.Errorf("%w: payment provider %s answered %d: %s", allot.ErrPermanent, path, code, snippet(b))
	}
	var res allot.PaymentResult
	if err := json.Unmarshal(b, &res); err != nil {
		return allot.PaymentResult{}, fmt.Errorf("payment provider %s answered 2xx with a bad body: %v", path, err)
	}
	switch res.Status {
	case allot.PaymentSucceeded, allot.PaymentDeclined, allot.PaymentPending, allot.PaymentNothingToRefund:
		return res, nil
	}
	// Transient: the key makes a retry safe, and the answer may have been a glitch.
	return allot.PaymentResult{}, fmt.Errorf("payment provider %s answered an unknown status %q", path, res.Status)
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 500 {
		s = strings.ToValidUTF8(s[:500], "") + "…"
	}
	return s
}
