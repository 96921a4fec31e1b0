// Package payments holds payment providers for Allot: Fake, an in-memory
// provider for development and tests; Server, which exposes a Fake over
// HTTP like a webhook-style provider; Client, the adapter that talks to
// such a provider; and the signed Callback a provider posts back to Allot.
package payments

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/allot/allot"
)

// Simulate values the Fake understands.
const (
	SimSucceed  = "succeed"
	SimDecline  = "decline"
	SimFailOnce = "fail_once"
	SimTimeout  = "timeout"
	SimPending  = "pending"
	// SimRefundPending: the charge succeeds; the first refund answers
	// pending with no effect yet, and the next one under its key refunds.
	SimRefundPending = "refund_pending"
)

var simModes = []string{"", SimSucceed, SimDecline, SimFailOnce, SimTimeout, SimPending, SimRefundPending}

// Fake is an in-memory payment provider. Its zero value is ready; set the
// exported fields before first use. It is safe for concurrent use.
//
// "timeout" captures (or refunds) before it hangs: the effect happens and
// only the answer is lost, as with a real provider, so a retry under a new
// key would show up as a second capture. "fail_once" fails before any effect.
// On refunds, "fail_once" and "timeout" apply; "decline" and "pending" do not.
// "refund_pending" captures normally; its first refund answers pending.
type Fake struct {
	// Hang bounds how long a "timeout" call blocks when ctx has no deadline (30s).
	Hang time.Duration
	// PendingDelay is how long a "pending" charge stays pending.
	PendingDelay time.Duration
	// OnPending, if set, receives a pending charge's final result.
	OnPending func(r allot.PaymentRequest, res allot.PaymentResult)

	mu       sync.Mutex
	charges  map[string]*charge             // by charge key
	refunds  map[string]allot.PaymentResult // by refund key
	tried    map[string]bool                // keys whose first attempt has failed
	captures map[string]int                 // by order
	refunded map[string]int                 // by order
	calls    int
}

type charge struct {
	req      allot.PaymentRequest
	res      allot.PaymentResult
	refunded bool
}

func (f *Fake) init() {
	if f.charges == nil {
		f.charges = map[string]*charge{}
		f.refunds = map[string]allot.PaymentResult{}
		f.tried = map[string]bool{}
		f.captures = map[string]int{}
		f.refunded = map[string]int{}
	}
}

func checkSimulate(s string) error {
	for _, m := range simModes {
		if s == m {
			return nil
		}
	}
	return fmt.Errorf("%w: simulate %q is not one of %q", allot.ErrPermanent, s, simModes[1:])
}

// Charge captures r.Amount once per r.Key.
func (f *Fake) Charge(ctx context.Context, r allot.PaymentRequest) (allot.PaymentResult, error) {
	f.mu.Lock()
	f.init()
	f.calls++
	if r.Key == "" || r.OrderID == "" {
		f.mu.Unlock()
		return allot.PaymentResult{}, fmt.Errorf("%w: a charge needs a key and an order_id", allot.ErrPermanent)
	}
	if err := checkSimulate(r.Simulate); err != nil {
		f.mu.Unlock()
		return allot.PaymentResult{}, err
	}
	if c, ok := f.charges[r.Key]; ok {
		f.mu.Unlock()
		// A key reused for another payment is a caller bug, as at real providers.
		if c.req.OrderID != r.OrderID || c.req.Amount != r.Amount {
			return allot.PaymentResult{}, fmt.Errorf("%w: idempotency key %q was used for order %s, amount %s %s",
				allot.ErrPermanent, r.Key, c.req.OrderID, c.req.Amount.Amount(), c.req.Amount.Currency)
		}
		return c.res, nil
	}
	first := !f.tried["c:"+r.Key]
	if (r.Simulate == SimFailOnce || r.Simulate == SimTimeout) && first {
		f.tried["c:"+r.Key] = true
	}
	if r.Simulate == SimFailOnce && first {
		f.mu.Unlock()
		return allot.PaymentResult{}, errors.New("payment provider unavailable (simulated)")
	}
	c := &charge{req: r}
	f.charges[r.Key] = c
	switch r.Simulate {
	case SimDecline:
		c.res = allot.PaymentResult{Status: allot.PaymentDeclined, Reason: "card declined (simulated)"}
	case SimPending:
		c.res = allot.PaymentResult{Status: allot.PaymentPending, PaymentID: newID("pay")}
		time.AfterFunc(f.PendingDelay, func() { f.settle(r, c) })
	default:
		c.res = allot.PaymentResult{Status: allot.PaymentSucceeded, PaymentID: newID("pay")}
		f.captures[r.OrderID]++
	}
	res := c.res
	f.mu.Unlock()
	if r.Simulate == SimTimeout && first {
		return allot.PaymentResult{}, f.hang(ctx)
	}
	return res, nil
}

// Settle settles the pending charge under key now, as the provider would
// later: a test's way to have a capture land at a chosen moment. It reports
// whether there was a pending charge.
func (f *Fake) Settle(key string) bool {
	f.mu.Lock()
	f.init()
	c, ok := f.charges[key]
	pending := ok && c.res.Status == allot.PaymentPending
	f.mu.Unlock()
	if pending {
		f.settle(c.req, c)
	}
	return pending
}

// settle turns a pending charge into a capture; later Charges with its key
// answer succeeded.
func (f *Fake) settle(r allot.PaymentRequest, c *charge) {
	f.mu.Lock()
	if c.res.Status != allot.PaymentPending { // voided meanwhile
		f.mu.Unlock()
		return
	}
	c.res.Status = allot.PaymentSucceeded
	f.captures[r.OrderID]++
	res := c.res
	on := f.OnPending
	f.mu.Unlock()
	if on != nil {
		on(r, res)
	}
}

func (f *Fake) hang(ctx context.Context) error {
	d := f.Hang
	if d <= 0 {
		d = 30 * time.Second
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("payment provider timed out (simulated): %w", ctx.Err())
	case <-t.C:
		return errors.New("payment provider timed out (simulated)")
	}
}

// Refund gives back the capture made under r.ChargeKey, once per charge.
func (f *Fake) Refund(ctx context.Context, r allot.PaymentRequest) (allot.PaymentResult, error) {
	f.mu.Lock()
	f.init()
	f.calls++
	if r.Key == "" || r.ChargeKey == "" {
		f.mu.Unlock()
		return allot.PaymentResult{}, fmt.Errorf("%w: a refund needs a key and a charge_key", allot.ErrPermanent)
	}
	if err := checkSimulate(r.Simulate); err != nil {
		f.mu.Unlock()
		return allot.PaymentResult{}, err
	}
	if res, ok := f.refunds[r.Key]; ok {
		f.mu.Unlock()
		return res, nil
	}
	first := !f.tried["r:"+r.Key]
	if (r.Simulate == SimFailOnce || r.Simulate == SimTimeout) && first {
		f.tried["r:"+r.Key] = true
	}
	if r.Simulate == SimFailOnce && first {
		f.mu.Unlock()
		return allot.PaymentResult{}, errors.New("payment provider unavailable (simulated)")
	}
	if r.Simulate == SimRefundPending && !f.tried["r:"+r.Key] {
		f.tried["r:"+r.Key] = true
		f.mu.Unlock()
		return allot.PaymentResult{Status: allot.PaymentPending, Reason: "refund in progress (simulated)"}, nil
	}
	c := f.charges[r.ChargeKey]
	if c != nil && c.res.Status == allot.PaymentPending {
		// A refund of a charge that has not settled voids it, as providers
		// cancel a payment intent: it will never capture.
		c.res = allot.PaymentResult{Status: allot.PaymentDeclined, PaymentID: c.res.PaymentID, Reason: "voided before it settled"}
		f.mu.Unlock()
		return allot.PaymentResult{Status: allot.PaymentNothingToRefund, Reason: "charge " + r.ChargeKey + " was pending and is now void"}, nil
	}
	if c == nil || c.res.Status != allot.PaymentSucceeded || c.refunded {
		// Not stored: no effect happened, and a later charge may change the answer.
		f.mu.Unlock()
		return allot.PaymentResult{Status: allot.PaymentNothingToRefund, Reason: "no unrefunded capture under charge key " + r.ChargeKey}, nil
	}
	c.refunded = true
	f.refunded[c.req.OrderID]++
	res := allot.PaymentResult{Status: allot.PaymentSucceeded, PaymentID: newID("re")}
	f.refunds[r.Key] = res
	f.mu.Unlock()
	if r.Simulate == SimTimeout && first {
		return allot.PaymentResult{}, f.hang(ctx)
	}
	return res, nil
}

// Captures is the number of captures made for orderID.
func (f *Fake) Captures(orderID string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.captures[orderID]
}

// Refunds is the number of refunds made for orderID.
func (f *Fake) Refunds(orderID string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refunded[orderID]
}

// Calls is the number of Charge and Refund calls, repeats included.
func (f *Fake) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

type totals struct {
	Captures    int `json:"captures"`
	Refunds     int `json:"refunds"`
	Calls       int `json:"calls"`
	MaxCaptures int `json:"max_captures_per_order"`
	MaxRefunds  int `json:"max_refunds_per_order"`
}

func (f *Fake) totals() totals {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := totals{Calls: f.calls}
	for _, n := range f.captures {
		t.Captures += n
		t.MaxCaptures = max(t.MaxCaptures, n)
	}
	for _, n := range f.refunded {
		t.Refunds += n
		t.MaxRefunds = max(t.MaxRefunds, n)
	}
	return t
}

func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}
