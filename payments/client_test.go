package payments

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot"
)

func serve(t *testing.T, f *Fake) string {
	t.Helper()
	s := NewServer(f, "", "")
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); s.Close() })
	return hs.URL
}

var _ allot.Payments = Client{}
var _ allot.Payments = (*Fake)(nil)

func TestClientSimulateModesOverHTTP(t *testing.T) {
	runSimulateModes(t, func(t *testing.T, f *Fake) allot.Payments { return Client{BaseURL: serve(t, f)} })
}

func TestClientRefundsOverHTTP(t *testing.T) {
	f := &Fake{}
	c := Client{BaseURL: serve(t, f) + "/"} // a trailing slash is tolerated
	ctx := context.Background()
	steps := []struct {
		do   func() (allot.PaymentResult, error)
		want outcome
	}{
		{func() (allot.PaymentResult, error) { return c.Refund(ctx, refundReq("r0", "c", "o")) }, nothing},
		{func() (allot.PaymentResult, error) { return c.Charge(ctx, chargeReq("c", "o", "")) }, succeeded},
		{func() (allot.PaymentResult, error) { return c.Refund(ctx, refundReq("r1", "c", "o")) }, succeeded},
		{func() (allot.PaymentResult, error) { return c.Refund(ctx, refundReq("r1", "c", "o")) }, succeeded},
		{func() (allot.PaymentResult, error) { return c.Refund(ctx, refundReq("r2", "c", "o")) }, nothing},
		{func() (allot.PaymentResult, error) { return c.Refund(ctx, refundReq("r3", "", "o")) }, permanent},
	}
	for i, s := range steps {
		res, err := s.do()
		if got := outcomeOf(res, err); got != s.want {
			t.Fatalf("step %d: got %+v (%+v, %v), want %+v", i, got, res, err, s.want)
		}
	}
	if f.Captures("o") != 1 || f.Refunds("o") != 1 {
		t.Fatalf("captures %d, refunds %d; want 1, 1", f.Captures("o"), f.Refunds("o"))
	}
}

// canned answers every request with one status and body, recording the last request.
func canned(t *testing.T, code int, body string, last *http.Request) string {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if last != nil {
			*last = *r.Clone(context.Background())
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}

func TestClientAnswers(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	tests := []struct {
		name    string
		url     string
		refund  bool
		want    outcome
		errText string
	}{
		{"200 succeeded", canned(t, 200, `{"status":"succeeded","payment_id":"pay_1","extra":1}`, nil), false, succeeded, ""},
		{"201 pending", canned(t, 201, `{"status":"pending"}`, nil), false, pending, ""},
		{"refund nothing_to_refund", canned(t, 200, `{"status":"nothing_to_refund"}`, nil), true, nothing, ""},
		{"charge answered nothing_to_refund", canned(t, 200, `{"status":"nothing_to_refund"}`, nil), false, transient, "nothing_to_refund"},
		{"unknown status", canned(t, 200, `{"status":"captured"}`, nil), false, transient, "unknown status"},
		{"empty status", canned(t, 200, `{}`, nil), false, transient, "unknown status"},
		{"not JSON", canned(t, 200, `<html>`, nil), false, transient, "bad body"},
		{"503", canned(t, 503, `{"error":"down"}`, nil), false, transient, "down"},
		{"500", canned(t, 500, `oops`, nil), false, transient, "oops"},
		{"429", canned(t, 429, `slow down`, nil), false, transient, "slow down"},
		{"422", canned(t, 422, `{"error":"simulate \"x\" is not one of"}`, nil), false, permanent, "is not one of"},
		{"400", canned(t, 400, `bad key`, nil), true, permanent, "bad key"},
		{"connection refused", closed.URL, false, transient, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Client{BaseURL: tc.url, HTTP: &http.Client{Timeout: 5 * time.Second}}
			var res allot.PaymentResult
			var err error
			if tc.refund {
				res, err = c.Refund(context.Background(), refundReq("r", "c", "o"))
			} else {
				res, err = c.Charge(context.Background(), chargeReq("c", "o", ""))
			}
			if got := outcomeOf(res, err); got != tc.want {
				t.Fatalf("got %+v (%+v, %v), want %+v", got, res, err, tc.want)
			}
			if tc.errText != "" && !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("error %q does not contain %q", err, tc.errText)
			}
		})
	}
}

func TestClientSendsKeyAndPath(t *testing.T) {
	var last http.Request
	c := Client{BaseURL: canned(t, 200, `{"status":"succeeded"}`, &last)}
	if _, err := c.Refund(context.Background(), refundReq("r-9", "c-9", "o")); err != nil {
		t.Fatal(err)
	}
	if last.Method != "POST" || last.URL.Path != "/refunds" || last.Header.Get("Idempotency-Key") != "r-9" {
		t.Fatalf("got %s %s with Idempotency-Key %q", last.Method, last.URL.Path, last.Header.Get("Idempotency-Key"))
	}
}

func TestClientContextEnds(t *testing.T) {
	f := &Fake{Hang: time.Hour}
	c := Client{BaseURL: serve(t, f)}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.Charge(ctx, chargeReq("k", "o", ""))
	if err == nil || errors.Is(err, allot.ErrPermanent) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want a transient error wrapping context.Canceled", err)
	}
}

func TestServerRejects(t *testing.T) {
	url := serve(t, &Fake{})
	good := `{"key":"k","order_id":"o","amount":{"amount":"120.00","currency":"EUR"}}`
	tests := []struct {
		name, method, path, key, body string
		code                          int
	}{
		{"ok", "POST", "/charges", "k", good, 200},
		{"no Idempotency-Key", "POST", "/charges", "", good, 400},
		{"Idempotency-Key differs", "POST", "/charges", "other", good, 400},
		{"bad JSON", "POST", "/charges", "k", `{"key":`, 400},
		{"unknown field", "POST", "/refunds", "k", `{"key":"k","bogus":1}`, 400},
		{"bad amount", "POST", "/charges", "k", `{"key":"k","order_id":"o","amount":{"amount":"-1","currency":"EUR"}}`, 400},
		{"unknown simulate", "POST", "/charges", "k2", `{"key":"k2","order_id":"o","amount":{"amount":"1.00","currency":"EUR"},"simulate":"x"}`, 422},
		{"fail_once", "POST", "/charges", "k3", `{"key":"k3","order_id":"o","amount":{"amount":"1.00","currency":"EUR"},"simulate":"fail_once"}`, 503},
		{"GET charges", "GET", "/charges", "", "", 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, url+tc.path, strings.NewReader(tc.body))
			if tc.key != "" {
				req.Header.Set("Idempotency-Key", tc.key)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tc.code {
				t.Fatalf("got %d %s, want %d", res.StatusCode, b, tc.code)
			}
		})
	}
}

func TestServerStats(t *testing.T) {
	f := &Fake{}
	url := serve(t, f)
	c := Client{BaseURL: url}
	ctx := context.Background()
	for _, r := range []allot.PaymentRequest{chargeReq("a1", "a", ""), chargeReq("a1", "a", ""), chargeReq("b1", "b", ""), chargeReq("b2", "b", "")} {
		if _, err := c.Charge(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Refund(ctx, refundReq("ra", "a1", "a")); err != nil {
		t.Fatal(err)
	}
	get := func(q string) map[string]int {
		res, err := http.Get(url + "/stats" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var m map[string]int
		if err := json.NewDecoder(res.Body).Decode(&m); err != nil || res.StatusCode != 200 {
			t.Fatalf("%d, %v", res.StatusCode, err)
		}
		return m
	}
	tests := []struct {
		q    string
		want map[string]int
	}{
		{"?order_id=a", map[string]int{"captures": 1, "refunds": 1}},
		{"?order_id=b", map[string]int{"captures": 2, "refunds": 0}}, // two keys for one order: the double charge shows
		{"?order_id=zzz", map[string]int{"captures": 0, "refunds": 0}},
		{"", map[string]int{"captures": 3, "refunds": 1, "calls": 5, "max_captures_per_order": 2, "max_refunds_per_order": 1}},
	}
	for _, tc := range tests {
		got := get(tc.q)
		if len(got) != len(tc.want) {
			t.Errorf("stats%s = %v, want %v", tc.q, got, tc.want)
			continue
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("stats%s = %v, want %v", tc.q, got, tc.want)
				break
			}
		}
	}
}

// TestClientDoesNotFollowRedirects: a redirect is not the provider's
// answer. Followed, the POST would become a GET without the payment, and
// what that GET answered would be taken for the charge's outcome.
func TestClientDoesNotFollowRedirects(t *testing.T) {
	target := canned(t, 200, `{"status":"succeeded","payment_id":"pay_1"}`, nil)
	moved := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target+r.URL.Path, http.StatusFound)
	}))
	defer moved.Close()
	res, err := Client{BaseURL: moved.URL}.Charge(context.Background(), chargeReq("c", "o", ""))
	if got := outcomeOf(res, err); got != permanent || !strings.Contains(err.Error(), "302") {
		t.Fatalf("charge through a redirect: %+v, %v; want a permanent error naming the 302", res, err)
	}
}
