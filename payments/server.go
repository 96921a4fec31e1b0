package payments

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/allot/allot"
)

// Server exposes a Fake over HTTP as a webhook-style provider:
//
//	POST /charges, POST /refunds  body allot.PaymentRequest, header Idempotency-Key = body.key
//	GET  /stats[?order_id=X]      capture and refund counts
//
// A pending charge's final result is posted, signed, to the callback URL.
// Set the exported fields before serving.
type Server struct {
	// RetryFor bounds how long a callback is retried (2 min).
	RetryFor time.Duration
	// FirstRetry is the first backoff between callback attempts, doubling up to 10s (200ms).
	FirstRetry time.Duration
	// HTTP sends callbacks (a client with a 10s timeout).
	HTTP *http.Client
	Log  *slog.Logger

	f           *Fake
	callbackURL string
	secret      string
	mux         *http.ServeMux

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// NewServer serves f. With a callbackURL it hooks f.OnPending (keeping any
// previous hook), so call it before f is in use.
func NewServer(f *Fake, callbackURL, secret string) *Server {
	s := &Server{f: f, callbackURL: callbackURL, secret: secret, mux: http.NewServeMux()}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mux.HandleFunc("POST /charges", func(w http.ResponseWriter, r *http.Request) { s.pay(w, r, f.Charge) })
	s.mux.HandleFunc("POST /refunds", func(w http.ResponseWriter, r *http.Request) { s.pay(w, r, f.Refund) })
	s.mux.HandleFunc("GET /stats", s.stats)
	if callbackURL != "" {
		prev := f.OnPending
		f.OnPending = func(r allot.PaymentRequest, res allot.PaymentResult) {
			if prev != nil {
				prev(r, res)
			}
			s.deliver(Callback{ID: newID("evt"), Kind: "charge", Key: r.Key, OrderID: r.OrderID,
				PaymentID: res.PaymentID, Status: res.Status, Reason: res.Reason})
		}
	}
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Close stops callback deliveries and waits for those under way.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.cancel()
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) pay(w http.ResponseWriter, r *http.Request, do func(context.Context, allot.PaymentRequest) (allot.PaymentResult, error)) {
	var req allot.PaymentRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request body: " + err.Error()})
		return
	}
	if k := r.Header.Get("Idempotency-Key"); k == "" || k != req.Key {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("Idempotency-Key header %q must equal the body's key %q", k, req.Key)})
		return
	}
	res, err := do(r.Context(), req)
	switch {
	case errors.Is(err, allot.ErrPermanent):
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": err.Error()})
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	if id := r.URL.Query().Get("order_id"); id != "" {
		writeJSON(w, http.StatusOK, map[string]int{"captures": s.f.Captures(id), "refunds": s.f.Refunds(id)})
		return
	}
	writeJSON(w, http.StatusOK, s.f.totals())
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// deliver posts cb until a 2xx, Close, or RetryFor passes. It runs in the
// Fake's timer goroutine. Each attempt is signed afresh; the event ID stays.
func (s *Server) deliver(cb Callback) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	client := s.HTTP
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	retryFor, backoff := s.RetryFor, s.FirstRetry
	if retryFor <= 0 {
		retryFor = 2 * time.Minute
	}
	if backoff <= 0 {
		backoff = 200 * time.Millisecond
	}
	body, _ := json.Marshal(cb)
	deadline := time.Now().Add(retryFor)
	for attempt := 1; ; attempt++ {
		err := s.post(client, body)
		if err == nil {
			return
		}
		if time.Now().Add(backoff).After(deadline) {
			log.Warn("payment callback given up", "event", cb.ID, "order", cb.OrderID, "attempts", attempt, "err", err)
			return
		}
		log.Info("payment callback failed; retrying", "event", cb.ID, "order", cb.OrderID, "attempt", attempt, "err", err)
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (s *Server) post(client *http.Client, body []byte) error {
	req, err := http.NewRequestWithContext(s.ctx, "POST", s.callbackURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SignatureHeader, SignCallback(s.secret, time.Now(), body))
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("callback receiver answered %d", res.StatusCode)
	}
	return nil
}
