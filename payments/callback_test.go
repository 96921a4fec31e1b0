package payments

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
)

const secret = "whsec_test_0123456789"

func TestParseCallback(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	good := Callback{ID: "evt_1", Kind: "charge", Key: "k", OrderID: "o", PaymentID: "pay_1", Status: allot.PaymentSucceeded}
	goodBody, _ := json.Marshal(good)
	tests := []struct {
		name   string
		secret string // for parsing; signing uses secret
		body   string // signed
		sent   string // sent instead of body, if set (tampering)
		signAt time.Time
		header string // used instead of the signature, if set
		want   error  // nil, ErrBadSignature or ErrBadCallback
	}{
		{name: "round trip", body: string(goodBody), signAt: now},
		{name: "4 minutes old", body: string(goodBody), signAt: now.Add(-4 * time.Minute)},
		{name: "refund nothing_to_refund", body: `{"id":"e","kind":"refund","key":"k","order_id":"o","status":"nothing_to_refund"}`, signAt: now},
		{name: "charge declined", body: `{"id":"e","kind":"charge","key":"k","order_id":"o","status":"declined","reason":"no"}`, signAt: now},
		{name: "tampered body", body: string(goodBody), sent: `{"id":"evt_1","kind":"charge","key":"k","order_id":"o2","status":"succeeded"}`, signAt: now, want: ErrBadSignature},
		{name: "stale", body: string(goodBody), signAt: now.Add(-6 * time.Minute), want: ErrBadSignature},
		{name: "from the future", body: string(goodBody), signAt: now.Add(6 * time.Minute), want: ErrBadSignature},
		{name: "wrong secret", secret: "another_secret_456", body: string(goodBody), signAt: now, want: ErrBadSignature},
		{name: "no secret configured", secret: "-", body: string(goodBody), signAt: now, want: ErrBadSignature},
		{name: "no header", body: string(goodBody), signAt: now, header: "-", want: ErrBadSignature},
		{name: "garbled header", body: string(goodBody), signAt: now, header: "t=abc,v1=00", want: ErrBadSignature},
		{name: "unknown field", body: `{"id":"e","kind":"charge","key":"k","order_id":"o","status":"succeeded","amount":"1"}`, signAt: now, want: ErrBadCallback},
		{name: "not JSON", body: `hello`, signAt: now, want: ErrBadCallback},
		{name: "trailing data", body: string(goodBody) + `{}`, signAt: now, want: ErrBadCallback},
		{name: "no order_id", body: `{"id":"e","kind":"charge","key":"k","status":"succeeded"}`, signAt: now, want: ErrBadCallback},
		{name: "no status", body: `{"id":"e","kind":"charge","key":"k","order_id":"o"}`, signAt: now, want: ErrBadCallback},
		{name: "no id", body: `{"kind":"charge","key":"k","order_id":"o","status":"succeeded"}`, signAt: now, want: ErrBadCallback},
		{name: "charge pending", body: `{"id":"e","kind":"charge","key":"k","order_id":"o","status":"pending"}`, signAt: now, want: ErrBadCallback},
		{name: "charge nothing_to_refund", body: `{"id":"e","kind":"charge","key":"k","order_id":"o","status":"nothing_to_refund"}`, signAt: now, want: ErrBadCallback},
		{name: "unknown kind", body: `{"id":"e","kind":"payout","key":"k","order_id":"o","status":"succeeded"}`, signAt: now, want: ErrBadCallback},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			header := SignCallback(secret, tc.signAt, []byte(tc.body))
			switch tc.header {
			case "":
			case "-":
				header = ""
			default:
				header = tc.header
			}
			sent := tc.body
			if tc.sent != "" {
				sent = tc.sent
			}
			sec := secret
			switch tc.secret {
			case "":
			case "-":
				sec = ""
			default:
				sec = tc.secret
			}
			cb, err := ParseCallback(sec, header, []byte(sent), now)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				var want Callback
				_ = json.Unmarshal([]byte(tc.body), &want)
				if cb != want {
					t.Fatalf("got %+v, want %+v", cb, want)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			other := ErrBadCallback
			if tc.want == ErrBadCallback {
				other = ErrBadSignature
			}
			if errors.Is(err, other) {
				t.Fatalf("%v is both kinds of error", err)
			}
		})
	}
}

// TestServerDeliversPendingCallback: a pending charge's final result reaches
// the receiver, signed, and is retried after a 500 under the same event ID.
func TestServerDeliversPendingCallback(t *testing.T) {
	var mu sync.Mutex
	var got []Callback
	done := make(chan struct{})
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		cb, err := ParseCallback(secret, r.Header.Get(SignatureHeader), body, time.Now())
		if err != nil {
			t.Errorf("receiver: %v", err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		got = append(got, cb)
		if len(got) == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		close(done)
	}))
	defer receiver.Close()

	f := &Fake{}
	s := NewServer(f, receiver.URL, secret)
	s.FirstRetry = 10 * time.Millisecond
	provider := httptest.NewServer(s)
	defer provider.Close()
	defer s.Close()

	r := chargeReq("k-pending", "o-pending", "pending")
	res, err := Client{BaseURL: provider.URL}.Charge(context.Background(), r)
	if err != nil || res.Status != allot.PaymentPending {
		t.Fatalf("got %+v, %v; want pending", res, err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("no successful callback delivery")
	}
	s.Close() // no further attempts after a 2xx; Close waits for the delivery to end
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("%d deliveries, want 2 (a 500, then a 2xx)", len(got))
	}
	want := Callback{ID: got[0].ID, Kind: "charge", Key: r.Key, OrderID: r.OrderID, PaymentID: res.PaymentID, Status: allot.PaymentSucceeded}
	for i, cb := range got {
		if cb != want {
			t.Errorf("delivery %d: %+v, want %+v", i, cb, want)
		}
	}
	if f.Captures(r.OrderID) != 1 {
		t.Errorf("captures = %d, want 1", f.Captures(r.OrderID))
	}
}

func TestServerGivesUpOnCallback(t *testing.T) {
	attempts := make(chan struct{}, 100)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts <- struct{}{}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer receiver.Close()
	f := &Fake{}
	s := NewServer(f, receiver.URL, secret)
	s.FirstRetry, s.RetryFor = time.Millisecond, time.Second
	delivered := make(chan struct{})
	prev := f.OnPending
	f.OnPending = func(r allot.PaymentRequest, res allot.PaymentResult) { prev(r, res); close(delivered) }
	if _, err := f.Charge(context.Background(), chargeReq("k", "o", "pending")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-delivered: // deliver returned: it gave up
	case <-time.After(30 * time.Second):
		t.Fatal("the delivery never gave up")
	}
	if n := len(attempts); n < 2 {
		t.Fatalf("%d attempts, want retries", n)
	}
	s.Close()
}
