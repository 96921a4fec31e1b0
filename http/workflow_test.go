package http_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	allothttp "github.com/allot/allot/http"
	"github.com/allot/allot/payments"
	"github.com/allot/allot/store/sqlite"
	"github.com/allot/allot/workflow"
)

// scripted answers by customer: "slow" is answered later, others accepted.
type scripted struct{}

func (scripted) Confirm(_ context.Context, r allot.SellerRequest) (allot.SellerAnswer, error) {
	if r.Order.CustomerID == "slow" {
		return allot.SellerAnswer{Decision: allot.SellerPending}, nil
	}
	return allot.SellerAnswer{Decision: allot.SellerAccepted}, nil
}

// mailbox fails for "bounce@example.com", permanently.
type mailbox struct {
	mu   sync.Mutex
	sent map[string]int
	down bool
}

func (m *mailbox) Notify(_ context.Context, n allot.Notification) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return fmt.Errorf("%w: 550 mailbox unavailable", allot.ErrPermanent)
	}
	m.sent[n.Key]++
	return nil
}

const secret = "whsec_test"

func newWorkflowAPI(t *testing.T) (*api, *mailbox) {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "allot.db"))
	if err != nil {
		t.Fatal(err)
	}
	mb := &mailbox{sent: map[string]int{}}
	fake := &payments.Fake{PendingDelay: time.Hour}
	run, err := workflow.New(context.Background(), s, workflow.Config{
		Payments: map[string]allot.Payments{"fake": fake, "prov": fake}, Sellers: scripted{}, Notifier: mb,
		MaxAttempts: 3, Backoff: func(int) time.Duration { return 10 * time.Millisecond },
		StepTimeout: time.Second, RescueAfter: 5 * time.Second, PollEvery: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(s, engine.Options{Batching: engine.Batching{Workers: 1}, Workflow: engine.Workflow{
		Scheduler: run, DefaultProvider: "fake", Providers: func(n string) bool { return n == "fake" || n == "prov" }}})
	if err := run.Start(context.Background(), eng); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		run.Stop(ctx)
		eng.Close()
		s.Close()
	})
	srv := allothttp.New(eng, nil)
	srv.SetWorkflow(allothttp.WorkflowOptions{Runner: run, CallbackSecrets: map[string]string{"prov": secret}, SellerToken: "sellertok"})
	a := &api{t: t, h: srv, store: s}
	a.mustDo(201, "POST", "/v1/resources", `{"id":"room","name":"Room","kind":"stock","capacity":5,"price":{"amount":"80.00","currency":"EUR"}}`)
	for _, c := range []string{"ada", "slow"} {
		a.mustDo(201, "POST", "/v1/customers", fmt.Sprintf(`{"id":%q,"email":"%s@example.com"}`, c, c))
	}
	return a, mb
}

func (a *api) awaitStatus(id string, want allot.OrderStatus) map[string]any {
	a.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		o := a.mustDo(200, "GET", "/v1/orders/"+id, "")
		if o["status"] == string(want) {
			return o
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("order %s is %v, want %s: %v", id, o["status"], want, o["history"])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func problemCode(t *testing.T, r resp) string {
	t.Helper()
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Fatalf("content type %q for %d: %s", ct, r.status, r.body)
	}
	return r.json(t)["code"].(string)
}

func TestWorkflowErrors(t *testing.T) {
	a, _ := newWorkflowAPI(t)
	cases := []struct {
		name         string
		method, path string
		body         string
		hdr          []string
		status       int
		code, field  string
	}{
		{"duplicate customer", "POST", "/v1/customers", `{"id":"ada","email":"x@example.com"}`, nil, 409, "already-exists", "id"},
		{"bad email", "POST", "/v1/customers", `{"id":"bob","email":"Bob <bob@example.com>"}`, nil, 422, "validation-failed", "email"},
		{"missing email", "POST", "/v1/customers", `{"id":"bob"}`, nil, 422, "validation-failed", "email"},
		{"unknown customer", "POST", "/v1/orders", `{"customer_id":"nobody","lines":[{"resource_id":"room","quantity":1}]}`, nil, 422, "unknown-customer", "customer_id"},
		{"hold for an unknown customer", "POST", "/v1/holds", `{"customer_id":"nobody","lines":[{"resource_id":"room","quantity":1}]}`, nil, 422, "unknown-customer", "customer_id"},
		{"unknown provider", "POST", "/v1/orders", `{"customer_id":"ada","lines":[{"resource_id":"room","quantity":1}],"payment":{"provider":"paypal"}}`, nil, 422, "validation-failed", "payment.provider"},
		{"unknown simulation", "POST", "/v1/orders", `{"customer_id":"ada","lines":[{"resource_id":"room","quantity":1}],"payment":{"provider":"fake","simulate":"explode"}}`, nil, 422, "validation-failed", "payment.simulate"},
		{"bad wait", "POST", "/v1/orders", `{"customer_id":"ada","lines":[{"resource_id":"room","quantity":1}]}`, []string{"Prefer", "wait=soon"}, 422, "validation-failed", "Prefer"},
		{"wait too long", "POST", "/v1/orders", `{"customer_id":"ada","lines":[{"resource_id":"room","quantity":1}]}`, []string{"Prefer", "wait=31"}, 422, "validation-failed", "Prefer"},
		{"unknown customer read", "GET", "/v1/customers/nobody", "", nil, 404, "not-found", ""},
		{"callback of an unknown provider", "POST", "/v1/payments/paypal/callback", `{}`, nil, 404, "not-found", ""},
		{"unsigned callback", "POST", "/v1/payments/prov/callback", `{"id":"e","kind":"charge","key":"k","order_id":"o","status":"succeeded"}`, nil, 401, "unauthorized", ""},
		{"seller decision without a token", "POST", "/v1/orders/x/seller-decision", `{"decision":"accepted"}`, nil, 401, "unauthorized", ""},
		{"seller decision with a wrong token", "POST", "/v1/orders/x/seller-decision", `{"decision":"accepted"}`, []string{"Authorization", "Bearer nope"}, 401, "unauthorized", ""},
		{"bad seller decision", "POST", "/v1/orders/x/seller-decision", `{"decision":"maybe"}`, []string{"Authorization", "Bearer sellertok"}, 422, "validation-failed", "decision"},
		{"seller decision on a missing order", "POST", "/v1/orders/x/seller-decision", `{"decision":"accepted"}`, []string{"Authorization", "Bearer sellertok"}, 404, "not-found", ""},
		{"retry a missing dead letter", "POST", "/v1/dead-letters/12345/retry", "", nil, 404, "not-found", ""},
		{"retry a bad id", "POST", "/v1/dead-letters/abc/retry", "", nil, 404, "not-found", ""},
		{"dead letters bad limit", "GET", "/v1/dead-letters?limit=500", "", nil, 422, "validation-failed", "limit"},
		{"dead letters bad cursor", "GET", "/v1/dead-letters?cursor=x", "", nil, 422, "validation-failed", "cursor"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := a.do(c.method, c.path, c.body, c.hdr...)
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %s", r.status, c.status, r.body)
			}
			if got := problemCode(t, r); got != c.code {
				t.Fatalf("code %q, want %q", got, c.code)
			}
			if f, _ := r.json(t)["field"].(string); f != c.field {
				t.Fatalf("field %q, want %q", f, c.field)
			}
		})
	}
	// Nothing was held by the refused orders.
	if bs, _ := a.store.Buckets(context.Background(), "room", "", ""); bs[0].Booked != 0 {
		t.Fatalf("refused orders booked %d", bs[0].Booked)
	}
}

func TestPreferWait(t *testing.T) {
	a, mb := newWorkflowAPI(t)
	body := `{"customer_id":"ada","lines":[{"resource_id":"room","quantity":1}]}`
	// Without Prefer the call answers at once, before the workflow ran.
	o := a.mustDo(201, "POST", "/v1/orders", body)
	if o["status"] != "awaiting_payment" {
		t.Fatalf("status %v without Prefer", o["status"])
	}
	first := o["id"].(string)
	o = a.mustDo(201, "POST", "/v1/orders", body, "Prefer", "respond-async, wait=10; foo")
	if o["status"] != "notified" || len(o["history"].([]any)) != 4 {
		t.Fatalf("with Prefer: wait=10: %v %v", o["status"], o["history"])
	}
	o = a.mustDo(201, "POST", "/v1/orders", `{"customer_id":"ada","lines":[{"resource_id":"room","quantity":1}],"payment":{"provider":"fake","simulate":"decline"}}`, "Prefer", "wait=10")
	if o["status"] != "payment_failed" {
		t.Fatalf("declined with wait: %v", o["status"])
	}
	// An order the workflow cannot settle alone (the seller answers later)
	// comes back as it stands when the wait is over.
	start := time.Now()
	o = a.mustDo(201, "POST", "/v1/orders", `{"customer_id":"slow","lines":[{"resource_id":"room","quantity":1}]}`, "Prefer", "wait=1")
	if o["status"] != "reserved" || time.Since(start) < time.Second {
		t.Fatalf("after wait=1: %v in %s", o["status"], time.Since(start))
	}
	// The first order (no Prefer) went on to be notified too.
	a.awaitStatus(first, allot.OrderNotified)
	mb.mu.Lock()
	defer mb.mu.Unlock()
	if len(mb.sent) != 2 {
		t.Fatalf("emails %v, want one for each notified order", mb.sent)
	}
}

func TestPaymentCallbacks(t *testing.T) {
	a, mb := newWorkflowAPI(t)
	o := a.mustDo(201, "POST", "/v1/orders", `{"customer_id":"ada","lines":[{"resource_id":"room","quantity":2}],"payment":{"provider":"prov","simulate":"pending"}}`)
	id := o["id"].(string)
	cb := func(status string, at time.Time, sig string) resp {
		body := fmt.Sprintf(`{"id":"evt_%d","kind":"charge","key":"charge-%s","order_id":%q,"payment_id":"pay_9","status":%q}`, at.UnixNano(), id, id, status)
		if sig == "" {
			sig = payments.SignCallback(secret, at, []byte(body))
		}
		return a.do("POST", "/v1/payments/prov/callback", body, payments.SignatureHeader, sig)
	}
	now := time.Now()
	cases := []struct {
		name   string
		r      func() resp
		status int
		code   string
	}{
		{"wrong secret", func() resp {
			body := fmt.Sprintf(`{"id":"evt_x","kind":"charge","key":"charge-%s","order_id":%q,"status":"succeeded"}`, id, id)
			return a.do("POST", "/v1/payments/prov/callback", body, payments.SignatureHeader, payments.SignCallback("other", now, []byte(body)))
		}, 401, "unauthorized"},
		{"stale signature", func() resp { return cb("succeeded", now.Add(-10*time.Minute), "") }, 401, "unauthorized"},
		{"too large", func() resp {
			return a.do("POST", "/v1/payments/prov/callback", `{"id":"`+strings.Repeat("x", allothttp.MaxBody)+`"}`, payments.SignatureHeader, "t=1,v1=00")
		}, 413, "request-too-large"},
		{"bad content", func() resp {
			body := `{"id":"e","kind":"charge","key":"k","order_id":"o","status":"maybe"}`
			return a.do("POST", "/v1/payments/prov/callback", body, payments.SignatureHeader, payments.SignCallback(secret, now, []byte(body)))
		}, 400, "malformed-request"},
	}
	for _, c := range cases {
		r := c.r()
		if r.status != c.status || problemCode(t, r) != c.code {
			t.Fatalf("%s: %d %s", c.name, r.status, r.body)
		}
		if r.status == 401 && r.header.Get("WWW-Authenticate") == "" {
			t.Fatalf("%s: a 401 without WWW-Authenticate", c.name)
		}
	}
	a.awaitStatus(id, allot.OrderAwaitingPayment)
	// The success, delivered three times, then a stale decline.
	for range 3 {
		if r := cb("succeeded", time.Now(), ""); r.status != 200 {
			t.Fatalf("callback: %d %s", r.status, r.body)
		}
	}
	// A replay of one delivery (same event id, signed again) is answered
	// from the first time, not applied again.
	body := fmt.Sprintf(`{"id":"evt_replayed","kind":"charge","key":"charge-%s","order_id":%q,"status":"succeeded"}`, id, id)
	first := a.do("POST", "/v1/payments/prov/callback", body, payments.SignatureHeader, payments.SignCallback(secret, time.Now(), []byte(body)))
	again := a.do("POST", "/v1/payments/prov/callback", body, payments.SignatureHeader, payments.SignCallback(secret, time.Now().Add(time.Second), []byte(body)))
	if first.status != 200 || again.status != 200 || again.header.Get("Idempotent-Replayed") != "true" || string(first.body) != string(again.body) {
		t.Fatalf("replayed callback: %d %s / %d %v %s", first.status, first.body, again.status, again.header, again.body)
	}
	// A key the sender picks is not the callback's: an unsigned request
	// naming a coming event's key cannot block it.
	poison := fmt.Sprintf(`{"id":"evt_poison","kind":"charge","key":"charge-%s","order_id":%q,"status":"succeeded"}`, id, id)
	if r := a.do("POST", "/v1/payments/prov/callback", `{}`, "Idempotency-Key", "payment-callback:prov:evt_poison"); r.status != 401 {
		t.Fatalf("unsigned callback with a chosen key: %d %s", r.status, r.body)
	}
	if r := a.do("POST", "/v1/payments/prov/callback", poison, payments.SignatureHeader, payments.SignCallback(secret, time.Now(), []byte(poison))); r.status != 200 {
		t.Fatalf("the callback whose key was tried first: %d %s", r.status, r.body)
	}
	// An event id too long for a key of its own is hashed into one.
	long := fmt.Sprintf(`{"id":"evt_%s","kind":"charge","key":"charge-%s","order_id":%q,"status":"succeeded"}`, strings.Repeat("x", 300), id, id)
	if r := a.do("POST", "/v1/payments/prov/callback", long, payments.SignatureHeader, payments.SignCallback(secret, time.Now(), []byte(long))); r.status != 200 {
		t.Fatalf("callback with a 300-byte id: %d %s", r.status, r.body)
	}
	if r := cb("declined", time.Now(), ""); r.status != 200 {
		t.Fatalf("late decline: %d %s", r.status, r.body)
	}
	got := a.awaitStatus(id, allot.OrderNotified)
	if n := len(got["history"].([]any)); n != 4 {
		t.Fatalf("history %v", got["history"])
	}
	mb.mu.Lock()
	sent := mb.sent["confirmed-"+id]
	mb.mu.Unlock()
	if sent != 1 {
		t.Fatalf("%d emails", sent)
	}
	// A callback about an order paid elsewhere is refused.
	other := a.mustDo(201, "POST", "/v1/orders", `{"customer_id":"ada","lines":[{"resource_id":"room","quantity":1}],"payment":{"provider":"fake","simulate":"pending"}}`)
	oid := other["id"].(string)
	body = fmt.Sprintf(`{"id":"e2","kind":"charge","key":"charge-%s","order_id":%q,"status":"succeeded"}`, oid, oid)
	r := a.do("POST", "/v1/payments/prov/callback", body, payments.SignatureHeader, payments.SignCallback(secret, time.Now(), []byte(body)))
	if r.status != 409 || problemCode(t, r) != "invalid-status-transition" {
		t.Fatalf("cross-provider callback: %d %s", r.status, r.body)
	}
}

func TestSellerDecision(t *testing.T) {
	a, _ := newWorkflowAPI(t)
	auth := []string{"Authorization", "Bearer sellertok"}
	o := a.mustDo(201, "POST", "/v1/orders", `{"customer_id":"slow","lines":[{"resource_id":"room","quantity":1}]}`)
	id := o["id"].(string)
	a.awaitStatus(id, allot.OrderReserved)
	got := a.mustDo(200, "POST", "/v1/orders/"+id+"/seller-decision", `{"decision":"accepted","reference":"BK-1"}`, auth...)
	if got["status"] != "confirmed" {
		t.Fatalf("after accept: %v", got["status"])
	}
	a.awaitStatus(id, allot.OrderNotified)
	// The same decision again changes nothing; the opposite one is refused.
	r := a.do("POST", "/v1/orders/"+id+"/seller-decision", `{"decision":"rejected","reason":"changed my mind"}`, auth...)
	if r.status != 409 || problemCode(t, r) != "invalid-status-transition" {
		t.Fatalf("late rejection: %d %s", r.status, r.body)
	}
	// A rejection releases the capacity (and refunds, see package workflow).
	o = a.mustDo(201, "POST", "/v1/orders", `{"customer_id":"slow","lines":[{"resource_id":"room","quantity":2}]}`)
	id = o["id"].(string)
	a.awaitStatus(id, allot.OrderReserved)
	got = a.mustDo(200, "POST", "/v1/orders/"+id+"/seller-decision", `{"decision":"rejected","reason":"closed for works"}`, auth...)
	if got["status"] != "rejected" {
		t.Fatalf("after reject: %v", got["status"])
	}
	a.mustDo(200, "POST", "/v1/orders/"+id+"/seller-decision", `{"decision":"rejected"}`, auth...)
	// Under an Idempotency-Key, a wrong token's 401 is not what the right
	// token gets, and the answer to the right token is not replayed to a
	// request without it.
	o = a.mustDo(201, "POST", "/v1/orders", `{"customer_id":"slow","lines":[{"resource_id":"room","quantity":1}]}`)
	id = o["id"].(string)
	a.awaitStatus(id, allot.OrderReserved)
	body := `{"decision":"rejected","reason":"full"}`
	if r := a.do("POST", "/v1/orders/"+id+"/seller-decision", body, "Idempotency-Key", "sd-1", "Authorization", "Bearer nope"); r.status != 401 {
		t.Fatalf("wrong token: %d %s", r.status, r.body)
	}
	if r := a.do("POST", "/v1/orders/"+id+"/seller-decision", body, "Idempotency-Key", "sd-1", "Authorization", "Bearer sellertok"); r.status != 200 {
		t.Fatalf("right token after a wrong one, same key: %d %s", r.status, r.body)
	}
	if r := a.do("POST", "/v1/orders/"+id+"/seller-decision", body, "Idempotency-Key", "sd-1"); r.status == 200 || r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("the stored answer was replayed without the token: %d %s", r.status, r.body)
	}
	if bs, _ := a.store.Buckets(context.Background(), "room", "", ""); bs[0].Booked != 1 {
		t.Fatalf("booked %d, want 1 (the confirmed order)", bs[0].Booked)
	}
}

func TestDeadLettersAPI(t *testing.T) {
	a, mb := newWorkflowAPI(t)
	mb.mu.Lock()
	mb.down = true
	mb.mu.Unlock()
	o := a.mustDo(201, "POST", "/v1/orders", `{"customer_id":"ada","lines":[{"resource_id":"room","quantity":1}]}`)
	id := o["id"].(string)
	var letters []any
	deadline := time.Now().Add(10 * time.Second)
	for len(letters) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no dead letter")
		}
		time.Sleep(20 * time.Millisecond)
		letters = a.mustDo(200, "GET", "/v1/dead-letters", "")["dead_letters"].([]any)
	}
	d := letters[0].(map[string]any)
	// A permanent failure is dead at once, without using its attempts.
	if d["step"] != "notify" || d["order_id"] != id || d["state"] != "cancelled" || !strings.Contains(d["reason"].(string), "550") {
		t.Fatalf("dead letter %v", d)
	}
	lid := fmt.Sprint(int64(d["id"].(float64)))
	mb.mu.Lock()
	mb.down = false
	mb.mu.Unlock()
	a.mustDo(200, "POST", "/v1/dead-letters/"+lid+"/retry", "")
	a.awaitStatus(id, allot.OrderNotified)
	r := a.do("POST", "/v1/dead-letters/"+lid+"/retry", "")
	if r.status != 409 {
		t.Fatalf("retrying a finished step: %d %s", r.status, r.body)
	}
	if n := len(a.mustDo(200, "GET", "/v1/dead-letters", "")["dead_letters"].([]any)); n != 0 {
		t.Fatalf("%d dead letters after the retry", n)
	}
}
