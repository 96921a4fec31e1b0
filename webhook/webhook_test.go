package webhook_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/store/sqlite"
	"github.com/allot/allot/webhook"
)

func TestSignVerify(t *testing.T) {
	now := time.Now()
	body := []byte(`{"id":"evt_1"}`)
	sig := webhook.Sign("s3cret-s3cret-s3cret", now, body)
	cases := []struct {
		name   string
		secret string
		body   string
		at     time.Time
		header string
		ok     bool
	}{
		{"valid", "s3cret-s3cret-s3cret", string(body), now, sig, true},
		{"other secret", "another-secret-xx", string(body), now, sig, false},
		{"tampered body", "s3cret-s3cret-s3cret", `{"id":"evt_2"}`, now, sig, false},
		{"replayed later", "s3cret-s3cret-s3cret", string(body), now.Add(10 * time.Minute), sig, false},
		{"garbage header", "s3cret-s3cret-s3cret", string(body), now, "v1=abc", false},
	}
	for _, c := range cases {
		if err := webhook.Verify(c.secret, c.header, []byte(c.body), c.at, 5*time.Minute); (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// receiver is a subscriber that verifies signatures and fails on demand.
type receiver struct {
	mu       sync.Mutex
	secret   string
	failures map[string]int // event type -> times to answer 500
	got      map[string]int // event id -> deliveries received
	types    []string
	bad      int
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := webhook.Verify(r.secret, req.Header.Get(webhook.SignatureHeader), body, time.Now(), time.Minute); err != nil {
		r.bad++
		http.Error(w, err.Error(), 401)
		return
	}
	var ev allot.Event
	_ = json.Unmarshal(body, &ev)
	if ev.ID != req.Header.Get("Allot-Event-Id") {
		r.bad++
	}
	if r.failures[ev.Type] > 0 {
		r.failures[ev.Type]--
		http.Error(w, "not now", 503)
		return
	}
	r.got[ev.ID]++
	r.types = append(r.types, ev.Type)
}

// newEngine gives an engine on a new SQLite file, with a stock resource
// "r" whose event is already numbered.
func newEngine(t *testing.T) (*sqlite.Store, *engine.Engine) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(st, engine.Options{})
	t.Cleanup(func() { eng.Close(); st.Close() })
	c := 10
	if _, err := eng.CreateResource(ctx, engine.ResourceInput{ID: "r", Name: "r", Kind: allot.KindStock, Capacity: &c}); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Sequence(ctx, 100); err != nil {
		t.Fatal(err)
	}
	return st, eng
}

func TestDispatcher(t *testing.T) {
	ctx := context.Background()
	st, eng := newEngine(t)
	good := &receiver{failures: map[string]int{allot.EventOrderCreated: 2}, got: map[string]int{}}
	down := &receiver{failures: map[string]int{allot.EventOrderCreated: 1 << 30}, got: map[string]int{}}
	goodSrv, downSrv := httptest.NewServer(good), httptest.NewServer(down)
	defer goodSrv.Close()
	defer downSrv.Close()
	gh, err := webhook.Register(ctx, st, goodSrv.URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	good.secret = gh.Secret
	dh, err := webhook.Register(ctx, st, downSrv.URL, "down-secret-1234567", []string{allot.EventOrderCreated})
	if err != nil {
		t.Fatal(err)
	}
	down.secret = dh.Secret
	// Events before registration are not sent; these are.
	o, err := eng.CreateOrder(ctx, engine.OrderInput{Lines: []allot.Line{{ResourceID: "r", Quantity: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eng.CancelOrder(ctx, o.ID, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Sequence(ctx, 100); err != nil {
		t.Fatal(err)
	}
	d := webhook.New(st, webhook.Config{FirstRetry: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, RetryFor: 300 * time.Millisecond}, nil)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := d.FanOut(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Deliver(ctx); err != nil {
			t.Fatal(err)
		}
		failed, _ := st.ListDeliveries(ctx, dh.ID, allot.DeliveryFailed, 10)
		good.mu.Lock()
		n := len(good.got)
		good.mu.Unlock()
		if n == 2 && len(failed) == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	good.mu.Lock()
	if len(good.got) != 2 || good.bad != 0 {
		t.Fatalf("good subscriber got %v (bad signatures %d)", good.got, good.bad)
	}
	for id, n := range good.got {
		if n != 1 {
			t.Fatalf("event %s delivered %d times", id, n)
		}
	}
	good.mu.Unlock()
	all, _ := st.ListDeliveries(ctx, gh.ID, "", 10)
	for _, dl := range all {
		if dl.Status != allot.DeliveryDelivered {
			t.Fatalf("good delivery %+v", dl)
		}
		if dl.EventType == allot.EventOrderCreated && dl.Attempts != 3 {
			t.Fatalf("order.created took %d attempts, want 3 (two 503s)", dl.Attempts)
		}
	}
	failed, _ := st.ListDeliveries(ctx, dh.ID, allot.DeliveryFailed, 10)
	if len(failed) != 1 || failed[0].EventType != allot.EventOrderCreated || failed[0].LastStatus != 503 || failed[0].Attempts < 2 {
		t.Fatalf("the down subscriber's failed deliveries: %+v (only order.created is subscribed)", failed)
	}
	// Replayed while the subscriber is still down, the delivery has the
	// whole retry window again, however old it is: a failure leaves it
	// pending.
	if _, err := webhook.Replay(ctx, st, dh.ID, failed[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Deliver(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.GetDelivery(ctx, failed[0].ID); got.Status != allot.DeliveryPending || got.Attempts != 1 {
		t.Fatalf("a replay that failed once: %s after %d attempts, want pending after 1", got.Status, got.Attempts)
	}
	// The operator fixes the subscriber and replays.
	down.mu.Lock()
	down.failures = map[string]int{}
	down.mu.Unlock()
	if _, err := webhook.Replay(ctx, st, dh.ID, failed[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Deliver(ctx); err != nil {
		t.Fatal(err)
	}
	got, _ := st.GetDelivery(ctx, failed[0].ID)
	if got.Status != allot.DeliveryDelivered || len(down.got) != 1 {
		t.Fatalf("after replay: %+v, received %v", got, down.got)
	}
	if _, err := webhook.Replay(ctx, st, gh.ID, failed[0].ID); allot.CodeOf(err) != allot.CodeNotFound {
		t.Fatalf("replaying another webhook's delivery: %v", err)
	}
}

func TestRegisterValidation(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, c := range []struct {
		url, secret string
		types       []string
		field       string
	}{
		{"ftp://x", "", nil, "url"},
		{"/relative", "", nil, "url"},
		{"https://:443/", "", nil, "url"},
		{"http://admin:hunter2@ok.example/hook", "", nil, "url"},
		{"http://ok.example", "short", nil, "secret"},
		{"http://ok.example", "", []string{"order.exploded"}, "event_types[0]"},
	} {
		_, err := webhook.Register(ctx, st, c.url, c.secret, c.types)
		var de *allot.Error
		if allot.CodeOf(err) != allot.CodeInvalid || !errorsAs(err, &de) || de.Field != c.field {
			t.Errorf("Register(%q, %q, %v) = %v, want a validation error on %s", c.url, c.secret, c.types, err, c.field)
		}
	}
}

func errorsAs(err error, de **allot.Error) bool {
	e, ok := err.(*allot.Error)
	*de = e
	return ok
}

// TestRedirectIsNotADelivery: a subscriber URL that redirects (http to
// https, a trailing slash) does not count as delivered. Followed, the POST
// would become a GET without the event, whose 200 would mark it delivered.
func TestRedirectIsNotADelivery(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	methods := map[string]int{}
	final := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		methods[r.Method]++
		mu.Unlock()
	}))
	defer final.Close()
	moved := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, final.URL+"/hook", http.StatusMovedPermanently)
	}))
	defer moved.Close()
	st, eng := newEngine(t)
	h, err := webhook.Register(ctx, st, moved.URL+"/hook", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	// An event after the registration, for the subscriber.
	c := 10
	if _, err := eng.CreateResource(ctx, engine.ResourceInput{ID: "r2", Name: "r2", Kind: allot.KindStock, Capacity: &c}); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Sequence(ctx, 100); err != nil {
		t.Fatal(err)
	}
	d := webhook.New(st, webhook.Config{}, nil)
	if _, err := d.FanOut(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Deliver(ctx); err != nil {
		t.Fatal(err)
	}
	ds, err := st.ListDeliveries(ctx, h.ID, "", 10)
	if err != nil || len(ds) == 0 {
		t.Fatalf("deliveries: %v, %v", ds, err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, dl := range ds {
		if dl.Status == allot.DeliveryDelivered || len(methods) > 0 {
			t.Errorf("delivery of %s: %s, and the redirect's target got %v; want it pending, the redirect not followed", dl.EventType, dl.Status, methods)
		}
	}
}
