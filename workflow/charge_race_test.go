package workflow_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/payments"
	"github.com/allot/allot/store/storetest"
	"github.com/allot/allot/workflow"
)

// slowProvider: the first charge blocks until released, then captures and
// loses its answer (a provider slow past the step timeout).
type slowProvider struct {
	*payments.Fake
	once    sync.Once
	entered chan struct{}
	gate    chan struct{}
	refunds atomic.Int64
}

func (p *slowProvider) Charge(ctx context.Context, r allot.PaymentRequest) (allot.PaymentResult, error) {
	first := false
	p.once.Do(func() { first = true })
	if !first {
		return p.Fake.Charge(ctx, r)
	}
	close(p.entered)
	<-p.gate
	if _, err := p.Fake.Charge(context.Background(), r); err != nil {
		return allot.PaymentResult{}, err
	}
	return allot.PaymentResult{}, errors.New("provider timed out (answer lost after capture)")
}

func (p *slowProvider) Refund(ctx context.Context, r allot.PaymentRequest) (allot.PaymentResult, error) {
	p.refunds.Add(1)
	return p.Fake.Refund(ctx, r)
}

func TestCaptureAfterCancelIsRefunded(t *testing.T) {
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			sp := &slowProvider{Fake: &payments.Fake{}, entered: make(chan struct{}), gate: make(chan struct{})}
			h := newHarness(t, open, false, func(c *workflow.Config) {
				c.Payments = map[string]allot.Payments{"fake": sp}
				c.StepTimeout = 5 * time.Second
				c.RescueAfter = 10 * time.Second
			})
			h.resource(t, "r", 5, eur(1000))
			h.customer(t, "c")
			o, err := h.eng.CreateOrder(ctx, engine.OrderInput{CustomerID: "c", Lines: []allot.Line{{ResourceID: "r", Quantity: 1}}})
			if err != nil {
				t.Fatal(err)
			}
			<-sp.entered
			if _, err := h.eng.CancelOrder(ctx, o.ID, "customer changed plans"); err != nil {
				t.Fatal(err)
			}
			for sp.refunds.Load() == 0 {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
			close(sp.gate)
			time.Sleep(3 * time.Second)
			t.Logf("captures %d refunds %d refund calls %d", sp.Captures(o.ID), sp.Refunds(o.ID), sp.refunds.Load())
			if sp.Captures(o.ID) != sp.Refunds(o.ID) {
				t.Fatalf("cancelled order %s: %d captures, %d refunds: the capture is never given back", o.ID, sp.Captures(o.ID), sp.Refunds(o.ID))
			}
		})
	}
}
