package workflow_test

import (
	"context"
	"errors"
	"fmt"
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

// clock is a movable engine clock.
type clock struct{ off atomic.Int64 }

func (c *clock) now() time.Time        { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) jump(d time.Duration)  { c.off.Add(int64(d)) }
func (c *clock) Now() func() time.Time { return c.now }

// seller answers by the order's customer: scripted per test.
type seller struct {
	mu     sync.Mutex
	answer map[string]allot.SellerAnswer // customer -> answer
	calls  map[string]int                // order -> calls
}

func (s *seller) Confirm(_ context.Context, r allot.SellerRequest) (allot.SellerAnswer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[r.Order.ID]++
	if a, ok := s.answer[r.Order.CustomerID]; ok {
		return a, nil
	}
	return allot.SellerAnswer{Decision: allot.SellerAccepted, Reference: "BK-" + r.Order.ID}, nil
}

// notes records notifications by key; fail makes it fail first.
type notes struct {
	mu    sync.Mutex
	sent  map[string]int
	to    map[string]string
	fail  error
	fails int
}

func (n *notes) Notify(_ context.Context, m allot.Notification) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail != nil {
		n.fails++
		return n.fail
	}
	n.sent[m.Key]++
	n.to[m.OrderID] = m.To
	return nil
}

func (n *notes) count(orderID string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sent["confirmed-"+orderID]
}

type harness struct {
	eng    *engine.Engine
	run    *workflow.Runner
	pay    *payments.Fake
	seller *seller
	notes  *notes
	clock  *clock
	store  allot.Store
	// refundCalls counts refund steps that reached the provider, by order.
	refundCalls sync.Map
}

type refundCounter struct {
	*payments.Fake
	calls *sync.Map
}

func (r refundCounter) Refund(ctx context.Context, req allot.PaymentRequest) (allot.PaymentResult, error) {
	n, _ := r.calls.LoadOrStore(req.OrderID, new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
	return r.Fake.Refund(ctx, req)
}

func newHarness(t *testing.T, open storetest.Opener, batched bool, tweak func(*workflow.Config)) *harness {
	t.Helper()
	ctx := context.Background()
	s := open(t)
	// Pending charges settle only through the test's callbacks.
	h := &harness{store: s, pay: &payments.Fake{PendingDelay: time.Hour}, clock: &clock{},
		seller: &seller{answer: map[string]allot.SellerAnswer{}, calls: map[string]int{}},
		notes:  &notes{sent: map[string]int{}, to: map[string]string{}}}
	cfg := workflow.Config{
		Payments:    map[string]allot.Payments{"fake": refundCounter{h.pay, &h.refundCalls}},
		Sellers:     h.seller,
		Notifier:    h.notes,
		MaxAttempts: 4,
		Backoff:     func(n int) time.Duration { return time.Duration(10<<n) * time.Millisecond },
		StepTimeout: 500 * time.Millisecond,
		RescueAfter: 2 * time.Second,
		SweepEvery:  100 * time.Millisecond,
		PollEvery:   20 * time.Millisecond,
		RefundPoll:  50 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	run, err := workflow.New(ctx, s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts := engine.Options{Now: h.clock.Now(), Workflow: engine.Workflow{Scheduler: run, DefaultProvider: "fake",
		Providers:      func(n string) bool { return n == "fake" },
		PaymentTimeout: 3 * time.Second, SellerTimeout: 3 * time.Second}}
	if batched {
		opts.Batching = engine.Batching{Workers: 4, MaxSize: 64}
	}
	h.eng = engine.New(s, opts)
	if err := run.Start(ctx, h.eng); err != nil {
		t.Fatal(err)
	}
	h.run = run
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := run.Stop(sctx); err != nil {
			t.Errorf("stopping the runner: %v", err)
		}
		h.eng.Close()
		s.Close()
	})
	return h
}

func (h *harness) resource(t *testing.T, id string, capacity int, price *allot.Money) {
	t.Helper()
	if _, err := h.eng.CreateResource(context.Background(), engine.ResourceInput{ID: id, Name: id, Kind: allot.KindStock, Capacity: &capacity, Price: price}); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) customer(t *testing.T, id string) {
	t.Helper()
	if _, err := h.eng.CreateCustomer(context.Background(), allot.Customer{ID: id, Email: id + "@example.com"}); err != nil {
		t.Fatal(err)
	}
}

// booked is the resource's booked units.
func (h *harness) booked(t *testing.T, id string) int {
	t.Helper()
	bs, err := h.store.Buckets(context.Background(), id, "", "")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range bs {
		n += b.Booked + b.Held
	}
	return n
}

// await waits until the order reaches one of want (failing after 20s) and
// then a little longer, so that anything wrongly scheduled after it shows.
func (h *harness) await(t *testing.T, id string, want ...allot.OrderStatus) allot.Order {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		o, err := h.eng.GetOrder(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if o.Status == w {
				return o
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("order %s is %s after 20s, want %v; history %+v", id, o.Status, want, o.History)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settle waits for the queue to run what is due, so that counts are final.
func settle() { time.Sleep(300 * time.Millisecond) }

func statuses(o allot.Order) []allot.OrderStatus {
	var out []allot.OrderStatus
	for _, t := range o.History {
		out = append(out, t.To)
	}
	return out
}

var eur = func(minor int64) *allot.Money { return &allot.Money{Minor: minor, Scale: 2, Currency: "EUR"} }

func TestWorkflowPaths(t *testing.T) {
	type want struct {
		final    allot.OrderStatus
		path     []allot.OrderStatus
		captures int
		refunds  int
		emails   int
		booked   int
	}
	A, R, P, C, N := allot.OrderAwaitingPayment, allot.OrderReserved, allot.OrderPaymentFailed, allot.OrderConfirmed, allot.OrderNotified
	cases := []struct {
		name     string
		simulate string
		price    *allot.Money
		seller   *allot.SellerAnswer
		after    func(t *testing.T, h *harness, o allot.Order) allot.Order
		want     want
	}{
		{name: "happy path to notified", want: want{N, []allot.OrderStatus{A, R, C, N}, 1, 0, 1, 2}},
		{name: "payment declined releases", simulate: "decline", want: want{P, []allot.OrderStatus{A, P}, 0, 0, 0, 0}},
		{name: "payment times out then succeeds", simulate: "timeout", want: want{N, []allot.OrderStatus{A, R, C, N}, 1, 0, 1, 2}},
		{name: "payment fails once then succeeds", simulate: "fail_once", want: want{N, []allot.OrderStatus{A, R, C, N}, 1, 0, 1, 2}},
		{name: "free order skips payment", price: eur(0), want: want{N, []allot.OrderStatus{R, C, N}, 0, 0, 1, 2}},
		{name: "seller rejects: refund and release",
			seller: &allot.SellerAnswer{Decision: allot.SellerRejected, Reason: "overbooked at the property"},
			want:   want{allot.OrderRejected, []allot.OrderStatus{A, R, allot.OrderRejected}, 1, 1, 0, 0}},
		{name: "seller answers later",
			seller: &allot.SellerAnswer{Decision: allot.SellerPending},
			after: func(t *testing.T, h *harness, o allot.Order) allot.Order {
				h.await(t, o.ID, R)
				settle()
				if _, err := h.run.SellerAnswer(context.Background(), o.ID, allot.SellerAnswer{Decision: allot.SellerAccepted, Reference: "late"}); err != nil {
					t.Fatal(err)
				}
				return h.await(t, o.ID, N)
			},
			want: want{N, []allot.OrderStatus{A, R, C, N}, 1, 0, 1, 2}},
		{name: "seller never answers: rejected after the timeout, refunded",
			seller: &allot.SellerAnswer{Decision: allot.SellerPending},
			after: func(t *testing.T, h *harness, o allot.Order) allot.Order {
				h.await(t, o.ID, R)
				return h.await(t, o.ID, allot.OrderRejected) // after SellerTimeout
			},
			want: want{allot.OrderRejected, []allot.OrderStatus{A, R, allot.OrderRejected}, 1, 1, 0, 0}},
		{name: "cancelled after confirmation: refunded",
			after: func(t *testing.T, h *harness, o allot.Order) allot.Order {
				h.await(t, o.ID, N)
				if _, err := h.eng.CancelOrder(context.Background(), o.ID, "customer cancelled"); err != nil {
					t.Fatal(err)
				}
				return h.await(t, o.ID, allot.OrderCancelled)
			},
			want: want{allot.OrderCancelled, []allot.OrderStatus{A, R, C, N, allot.OrderCancelled}, 1, 1, 1, 0}},
		{name: "cancelled, the refund pending at first: refunded once it is done", simulate: "refund_pending",
			after: func(t *testing.T, h *harness, o allot.Order) allot.Order {
				h.await(t, o.ID, N)
				if _, err := h.eng.CancelOrder(context.Background(), o.ID, "customer cancelled"); err != nil {
					t.Fatal(err)
				}
				o = h.await(t, o.ID, allot.OrderCancelled)
				// The step asks again after RefundPoll; give it time.
				for deadline := time.Now().Add(5 * time.Second); h.pay.Refunds(o.ID) == 0 && time.Now().Before(deadline); {
					time.Sleep(10 * time.Millisecond)
				}
				return o
			},
			want: want{allot.OrderCancelled, []allot.OrderStatus{A, R, C, N, allot.OrderCancelled}, 1, 1, 1, 0}},
		{name: "payment never completes: expired and released", simulate: "pending",
			after: func(t *testing.T, h *harness, o allot.Order) allot.Order {
				return h.await(t, o.ID, allot.OrderExpired) // after PaymentTimeout
			},
			want: want{allot.OrderExpired, []allot.OrderStatus{A, allot.OrderExpired}, 0, 0, 0, 0}},
	}
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, open, name == "postgres", nil)
			for i, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					ctx := context.Background()
					res, cus := fmt.Sprintf("room-%d", i), fmt.Sprintf("cus-%d", i)
					price := c.price
					if price == nil {
						price = eur(12000)
					}
					h.resource(t, res, 5, price)
					h.customer(t, cus)
					if c.seller != nil {
						h.seller.mu.Lock()
						h.seller.answer[cus] = *c.seller
						h.seller.mu.Unlock()
					}
					in := engine.OrderInput{CustomerID: cus, Lines: []allot.Line{{ResourceID: res, Quantity: 2}}}
					if c.simulate != "" {
						in.Payment = &allot.OrderPayment{Provider: "fake", Simulate: c.simulate}
					}
					o, err := h.eng.CreateOrder(ctx, in)
					if err != nil {
						t.Fatal(err)
					}
					if c.after != nil {
						o = c.after(t, h, o)
					} else {
						o = h.await(t, o.ID, c.want.final)
					}
					settle()
					o, err = h.eng.GetOrder(ctx, o.ID)
					if err != nil {
						t.Fatal(err)
					}
					if o.Status != c.want.final {
						t.Fatalf("status %s, want %s; history %+v", o.Status, c.want.final, o.History)
					}
					if got := statuses(o); fmt.Sprint(got) != fmt.Sprint(c.want.path) {
						t.Errorf("path %v, want %v", got, c.want.path)
					}
					for _, tr := range o.History {
						if tr.Cause == "" || tr.At.IsZero() {
							t.Errorf("transition without cause or time: %+v", tr)
						}
					}
					if got := h.pay.Captures(o.ID); got != c.want.captures {
						t.Errorf("captures %d, want %d", got, c.want.captures)
					}
					if got := h.pay.Refunds(o.ID); got != c.want.refunds {
						t.Errorf("refunds %d, want %d", got, c.want.refunds)
					}
					if got := h.notes.count(o.ID); got != c.want.emails {
						t.Errorf("emails %d, want %d", got, c.want.emails)
					}
					if got := h.booked(t, res); got != c.want.booked {
						t.Errorf("booked %d, want %d", got, c.want.booked)
					}
					a, err := engine.Check(ctx, h.store, res)
					if err != nil || len(a.Violations) > 0 {
						t.Fatalf("audit: %v %v", err, a.Violations)
					}
				})
			}
		})
	}
}

func TestUnknownCustomerRefusedBeforeHolding(t *testing.T) {
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, open, false, nil)
			h.resource(t, "r", 3, eur(100))
			_, err := h.eng.CreateOrder(context.Background(), engine.OrderInput{CustomerID: "nobody", Lines: []allot.Line{{ResourceID: "r", Quantity: 1}}})
			if allot.CodeOf(err) != allot.CodeUnknownCustomer {
				t.Fatalf("err %v, want %s", err, allot.CodeUnknownCustomer)
			}
			if n := h.booked(t, "r"); n != 0 {
				t.Fatalf("booked %d after a refused order", n)
			}
			os, err := h.eng.ListOrders(context.Background(), allot.OrderFilter{})
			if err != nil || len(os) != 0 {
				t.Fatalf("orders %v, %v; want none", os, err)
			}
		})
	}
}

// TestCallbacksRepeatedAndReordered applies a provider's answers as its
// callbacks would arrive: repeated, racing, and out of order.
func TestCallbacksRepeatedAndReordered(t *testing.T) {
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			h := newHarness(t, open, name == "postgres", nil)
			h.resource(t, "r", 10, eur(500))
			h.customer(t, "c")
			newOrder := func() allot.Order {
				o, err := h.eng.CreateOrder(ctx, engine.OrderInput{CustomerID: "c", Lines: []allot.Line{{ResourceID: "r", Quantity: 1}},
					Payment: &allot.OrderPayment{Provider: "fake", Simulate: "pending"}})
				if err != nil {
					t.Fatal(err)
				}
				settle()
				return o
			}
			ok := allot.PaymentResult{Status: allot.PaymentSucceeded, PaymentID: "pay_1"}
			no := allot.PaymentResult{Status: allot.PaymentDeclined, Reason: "insufficient funds"}

			// The same success, delivered by 8 racing callbacks.
			o := newOrder()
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					if _, err := h.run.ChargeResult(ctx, o.ID, "fake", ok); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			// A stale decline after the success changes nothing.
			if _, err := h.run.ChargeResult(ctx, o.ID, "fake", no); err != nil {
				t.Fatal(err)
			}
			got := h.await(t, o.ID, allot.OrderNotified)
			if fmt.Sprint(statuses(got)) != fmt.Sprint([]allot.OrderStatus{allot.OrderAwaitingPayment, allot.OrderReserved, allot.OrderConfirmed, allot.OrderNotified}) {
				t.Fatalf("history %v", statuses(got))
			}
			settle()
			if n := h.notes.count(o.ID); n != 1 {
				t.Fatalf("%d emails, want 1", n)
			}
			h.seller.mu.Lock()
			calls := h.seller.calls[o.ID]
			h.seller.mu.Unlock()
			if calls != 1 {
				t.Fatalf("seller asked %d times, want 1", calls)
			}

			// A decline first, then a (contradicting) success: the order
			// stays failed and the late capture is refunded.
			o2 := newOrder()
			if _, err := h.run.ChargeResult(ctx, o2.ID, "fake", no); err != nil {
				t.Fatal(err)
			}
			if _, err := h.run.ChargeResult(ctx, o2.ID, "fake", no); err != nil {
				t.Fatal(err)
			}
			got = h.await(t, o2.ID, allot.OrderPaymentFailed)
			if len(got.History) != 2 {
				t.Fatalf("history %v", statuses(got))
			}
			// The provider captures after all (its decline was wrong) and says
			// so: the order stays failed and the capture is given back.
			if !h.pay.Settle("charge-" + o2.ID) {
				t.Fatal("no pending charge to settle")
			}
			if _, err := h.run.ChargeResult(ctx, o2.ID, "fake", ok); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for h.pay.Refunds(o2.ID) != 1 {
				if time.Now().After(deadline) {
					t.Fatalf("the late capture of a failed order was not refunded (%d captures)", h.pay.Captures(o2.ID))
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got, _ := h.eng.GetOrder(ctx, o2.ID); got.Status != allot.OrderPaymentFailed {
				t.Fatalf("status %s", got.Status)
			}
		})
	}
}

func TestDeadLetterAndRetry(t *testing.T) {
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			h := newHarness(t, open, false, nil)
			h.notes.fail = errors.New("mail server unreachable")
			h.resource(t, "r", 2, eur(100))
			h.customer(t, "c")
			o, err := h.eng.CreateOrder(ctx, engine.OrderInput{CustomerID: "c", Lines: []allot.Line{{ResourceID: "r", Quantity: 1}}})
			if err != nil {
				t.Fatal(err)
			}
			var dead []workflow.DeadLetter
			deadline := time.Now().Add(20 * time.Second)
			for len(dead) == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the failing step never became a dead letter")
				}
				time.Sleep(50 * time.Millisecond)
				if dead, err = h.run.DeadLetters(ctx, 0, 50); err != nil {
					t.Fatal(err)
				}
			}
			d := dead[0]
			if d.Step != string(allot.StepNotify) || d.OrderID != o.ID || d.Attempts != 4 || d.Reason == "" || len(d.Errors) != 4 {
				t.Fatalf("dead letter %+v", d)
			}
			if got, _ := h.eng.GetOrder(ctx, o.ID); got.Status != allot.OrderConfirmed {
				t.Fatalf("order %s while its notification is dead, want confirmed", got.Status)
			}
			if _, err := h.run.Retry(ctx, 999999); allot.CodeOf(err) != allot.CodeNotFound {
				t.Fatalf("retry of a missing letter: %v", err)
			}
			h.notes.mu.Lock()
			h.notes.fail = nil
			h.notes.mu.Unlock()
			if _, err := h.run.Retry(ctx, d.ID); err != nil {
				t.Fatal(err)
			}
			h.await(t, o.ID, allot.OrderNotified)
			if _, err := h.run.Retry(ctx, d.ID); allot.CodeOf(err) != allot.CodeInvalidTransition {
				t.Fatalf("retrying a letter that is no longer dead: %v", err)
			}
			if dead, _ = h.run.DeadLetters(ctx, 0, 50); len(dead) != 0 {
				t.Fatalf("dead letters after the retry: %+v", dead)
			}
		})
	}
}
