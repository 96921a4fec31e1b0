package sellers

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
)

func TestAuto(t *testing.T) {
	a, err := Auto{}.Confirm(context.Background(), allot.SellerRequest{Key: "k", Order: allot.Order{ID: "ord_1"}})
	if err != nil || a.Decision != allot.SellerAccepted || a.Reason != "auto-confirmed" {
		t.Fatalf("Confirm = %+v, %v", a, err)
	}
}

// seen is what the fake seller received.
type seen struct {
	method, contentType, key, auth string
	req                            allot.SellerRequest
}

func TestHTTP(t *testing.T) {
	tests := []struct {
		name     string
		token    string
		status   int
		body     string
		want     allot.SellerAnswer
		wantErr  bool
		wantPerm bool
		errHas   string
	}{
		{name: "accepted", token: "tok", status: 200, body: `{"decision":"accepted","reason":"ok","reference":"BK-1"}`,
			want: allot.SellerAnswer{Decision: allot.SellerAccepted, Reason: "ok", Reference: "BK-1"}},
		{name: "rejected", status: 200, body: `{"decision":"rejected","reason":"sold out"}`,
			want: allot.SellerAnswer{Decision: allot.SellerRejected, Reason: "sold out"}},
		{name: "pending in 200", status: 200, body: `{"decision":"pending"}`,
			want: allot.SellerAnswer{Decision: allot.SellerPending}},
		{name: "202 empty body", status: 202, want: allot.SellerAnswer{Decision: allot.SellerPending}},
		{name: "202 with body", status: 202, body: `{"decision":"accepted","reference":"R"}`,
			want: allot.SellerAnswer{Decision: allot.SellerPending, Reference: "R"}},
		{name: "202 non-json body", status: 202, body: `queued`, want: allot.SellerAnswer{Decision: allot.SellerPending}},
		{name: "unknown decision", status: 200, body: `{"decision":"maybe"}`, wantErr: true, errHas: "maybe"},
		{name: "missing decision", status: 200, body: `{}`, wantErr: true},
		{name: "malformed 200", status: 200, body: `{"decision":`, wantErr: true},
		{name: "400", status: 400, body: `{"error":"bad order"}`, wantErr: true, wantPerm: true, errHas: "bad order"},
		{name: "404", status: 404, wantErr: true, wantPerm: true},
		{name: "422 long body", status: 422, body: strings.Repeat("x", 2000) + "TAIL", wantErr: true, wantPerm: true},
		{name: "429 is transient", status: 429, wantErr: true},
		{name: "408 is transient", status: 408, wantErr: true},
		{name: "500", status: 500, body: "boom", wantErr: true, errHas: "boom"},
		{name: "503", status: 503, wantErr: true},
		{name: "204 unexpected", status: 204, wantErr: true},
		{name: "302 not followed", status: 302, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var got seen
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				got = seen{method: r.Method, contentType: r.Header.Get("Content-Type"),
					key: r.Header.Get("Idempotency-Key"), auth: r.Header.Get("Authorization")}
				b, _ := io.ReadAll(r.Body)
				if err := json.Unmarshal(b, &got.req); err != nil {
					t.Errorf("request body %q: %v", b, err)
				}
				if tc.status == 302 {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()

			req := allot.SellerRequest{Key: "seller_confirm:ord_1", Order: allot.Order{ID: "ord_1", Status: allot.OrderReserved}}
			a, err := HTTP{URL: srv.URL, Token: tc.token}.Confirm(context.Background(), req)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Confirm = %+v, %v; want error %v", a, err, tc.wantErr)
			}
			if err != nil {
				if errors.Is(err, allot.ErrPermanent) != tc.wantPerm {
					t.Errorf("errors.Is(%v, ErrPermanent) = %v, want %v", err, !tc.wantPerm, tc.wantPerm)
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Errorf("error %q does not mention %q", err, tc.errHas)
				}
				var se *StatusError
				if errors.As(err, &se) && len(se.Body) > maxErrorBody {
					t.Errorf("error body is %d bytes, want at most %d", len(se.Body), maxErrorBody)
				}
			} else if a != tc.want {
				t.Errorf("answer %+v, want %+v", a, tc.want)
			}

			mu.Lock()
			defer mu.Unlock()
			if got.method != http.MethodPost || got.contentType != "application/json" || got.key != req.Key {
				t.Errorf("request %s, Content-Type %q, Idempotency-Key %q", got.method, got.contentType, got.key)
			}
			wantAuth := ""
			if tc.token != "" {
				wantAuth = "Bearer " + tc.token
			}
			if got.auth != wantAuth {
				t.Errorf("Authorization %q, want %q", got.auth, wantAuth)
			}
			if got.req.Key != req.Key || got.req.Order.ID != "ord_1" {
				t.Errorf("request body %+v", got.req)
			}
		})
	}
}

func TestHTTPTransientFailures(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer slow.Close()
	defer close(release)

	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()

	tests := []struct {
		name    string
		h       HTTP
		timeout time.Duration
		wantIs  error
	}{
		{name: "ctx deadline", h: HTTP{URL: slow.URL}, timeout: 100 * time.Millisecond, wantIs: context.DeadlineExceeded},
		{name: "client timeout", h: HTTP{URL: slow.URL, Client: &http.Client{Timeout: 100 * time.Millisecond}}, timeout: time.Minute},
		{name: "connection refused", h: HTTP{URL: downURL}, timeout: 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			start := time.Now()
			_, err := tc.h.Confirm(ctx, allot.SellerRequest{Key: "k"})
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, allot.ErrPermanent) {
				t.Errorf("%v is permanent", err)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("%v is not %v", err, tc.wantIs)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestHTTPInvalidRequest(t *testing.T) {
	for _, key := range []string{"", "a\r\nX-Injected: 1"} {
		_, err := HTTP{URL: "http://127.0.0.1:1"}.Confirm(context.Background(), allot.SellerRequest{Key: key})
		if !errors.Is(err, allot.ErrPermanent) {
			t.Errorf("key %q: %v, want ErrPermanent", key, err)
		}
	}
}
