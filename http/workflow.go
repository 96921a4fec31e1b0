package http

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/payments"
	"github.com/allot/allot/workflow"
)

// Workflow is what the API needs of the workflow runner.
type Workflow interface {
	ChargeResult(ctx context.Context, orderID, provider string, res allot.PaymentResult) (allot.Order, error)
	SellerAnswer(ctx context.Context, orderID string, a allot.SellerAnswer) (allot.Order, error)
	DeadLetters(ctx context.Context, before int64, limit int) ([]workflow.DeadLetter, error)
	Retry(ctx context.Context, id int64) (workflow.DeadLetter, error)
}

// WorkflowOptions connect the API to a running workflow.
type WorkflowOptions struct {
	Runner Workflow
	// CallbackSecrets are the webhook-style payment providers' signing
	// secrets, by provider name: a callback is accepted only when signed.
	CallbackSecrets map[string]string
	// SellerToken authenticates sellers' later answers (Bearer token); with
	// none set, the seller-decision endpoint refuses every request.
	SellerToken string
}

// SetWorkflow turns on the workflow's endpoints.
func (s *Server) SetWorkflow(o WorkflowOptions) { s.wf = o }

// MaxWait bounds Prefer: wait, well inside the server's write timeout.
const MaxWait = 30

func (s *Server) runner() (Workflow, error) {
	if s.wf.Runner == nil {
		return nil, allot.Errorf(allot.CodeNotFound, "the booking workflow is not running on this server")
	}
	return s.wf.Runner, nil
}

// preferWait parses the wait preference (RFC 7240) of a Prefer header:
// seconds, at most MaxWait; 0 when absent.
func preferWait(r *nethttp.Request) (time.Duration, error) {
	for _, h := range r.Header.Values("Prefer") {
		for _, p := range strings.Split(h, ",") {
			pref, _, _ := strings.Cut(p, ";") // a preference's parameters: none for wait
			k, v, ok := strings.Cut(strings.TrimSpace(pref), "=")
			if !strings.EqualFold(strings.TrimSpace(k), "wait") {
				continue
			}
			if !ok {
				continue // a wait without seconds asks for nothing (RFC 7240 lets it be ignored)
			}
			n, err := strconv.Atoi(strings.Trim(strings.TrimSpace(v), `"`))
			if err != nil || n < 0 || n > MaxWait {
				return 0, allot.Invalid("Prefer", "wait must be a whole number of seconds from 0 to %d, got %q", MaxWait, v)
			}
			return time.Duration(n) * time.Second, nil
		}
	}
	return 0, nil
}

// settled reports whether the workflow is done with an order, or is waiting
// on no step of its own.
func (s *Server) settled(o allot.Order) bool {
	switch o.Status {
	case allot.OrderAwaitingPayment:
		return false
	case allot.OrderReserved:
		return !s.eng.WorkflowOn()
	case allot.OrderConfirmed:
		return !s.eng.WorkflowOn() || o.CustomerID == ""
	}
	return true
}

// await polls an order until the workflow settles it or d passes, and
// returns its latest state (seed 001's purchase call that waits for the
// result).
func (s *Server) await(ctx context.Context, o allot.Order, d time.Duration) (allot.Order, error) {
	deadline := time.Now().Add(d)
	tick := 20 * time.Millisecond
	for !s.settled(o) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return o, nil
		case <-s.closing: // shutting down: answer with what there is
			return o, nil
		case <-time.After(min(tick, time.Until(deadline))):
		}
		tick = min(tick*2, 200*time.Millisecond)
		n, err := s.eng.GetOrder(context.WithoutCancel(ctx), o.ID)
		if err != nil {
			return o, err
		}
		o = n
	}
	return o, nil
}

func (s *Server) createCustomer(r *nethttp.Request) (any, error) {
	var c allot.Customer
	var in struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		Email string `json:"email"`
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	c.ID, c.Name, c.Email = in.ID, in.Name, in.Email
	return s.eng.CreateCustomer(r.Context(), c)
}

func (s *Server) getCustomer(r *nethttp.Request) (any, error) {
	return s.eng.GetCustomer(r.Context(), r.PathValue("id"))
}

// callbackOnce runs a verified callback under an Idempotency-Key made of
// its event id, so that a replayed delivery (seed 002: "ignored by its
// UUID") gets the first answer and does nothing again. The signature is
// checked first: an unverified request must not claim the key.
func (s *Server) callbackOnce(next nethttp.Handler) nethttp.Handler {
	return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		provider := r.PathValue("provider")
		secret, ok := s.wf.CallbackSecrets[provider]
		body, err := io.ReadAll(nethttp.MaxBytesReader(w, r.Body, MaxBody))
		var tooBig *nethttp.MaxBytesError
		if errors.As(err, &tooBig) {
			writeProblem(w, jsonFieldError(err), r.URL.Path)
			return
		}
		// Only a verified callback has a key, and only this one: a key the
		// sender chose is not the provider's word.
		r.Header.Del("Idempotency-Key")
		if err == nil && ok && s.wf.Runner != nil {
			if cb, perr := payments.ParseCallback(secret, r.Header.Get(payments.SignatureHeader), body, time.Now()); perr == nil {
				r = r.WithContext(context.WithValue(r.Context(), derivedKey{}, callbackKey(provider, cb.ID)))
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}

// callbackKey is a verified callback's Idempotency-Key: its provider and
// event id, hashed when they would not fit a key.
func callbackKey(provider, id string) string {
	k := allot.KeyPaymentCallback + provider + ":" + id
	if len(k) > 255 {
		sum := sha256.Sum256([]byte(provider + ":" + id))
		k = allot.KeyPaymentCallback + "sha256:" + hex.EncodeToString(sum[:])
	}
	return k
}

// derivedKey carries an Idempotency-Key Allot derived itself (a verified
// callback's) from callbackOnce to handle.
type derivedKey struct{}

// paymentCallback applies a payment provider's signed answer. Repeated and
// out-of-order callbacks change nothing twice; the answer is 200 with the
// order as it now stands, so that the provider stops retrying.
func (s *Server) paymentCallback(r *nethttp.Request) (any, error) {
	run, err := s.runner()
	if err != nil {
		return nil, err
	}
	provider := r.PathValue("provider")
	secret, ok := s.wf.CallbackSecrets[provider]
	if !ok {
		return nil, allot.Errorf(allot.CodeNotFound, "no payment provider %q takes callbacks here", provider)
	}
	body, err := io.ReadAll(nethttp.MaxBytesReader(nil, r.Body, MaxBody))
	if err != nil {
		return nil, jsonFieldError(err)
	}
	cb, err := payments.ParseCallback(secret, r.Header.Get(payments.SignatureHeader), body, time.Now())
	switch {
	case errors.Is(err, payments.ErrBadSignature):
		return nil, allot.Errorf(allot.CodeUnauthorized, "the %s header does not verify: %v", payments.SignatureHeader, err)
	case err != nil:
		return nil, malformed("%v", err)
	}
	o, err := s.eng.GetOrder(r.Context(), cb.OrderID)
	if err != nil {
		return nil, err
	}
	if o.Payment == nil || o.Payment.Provider != provider {
		return nil, allot.Errorf(allot.CodeInvalidTransition, "order %q is not paid through %s", o.ID, provider)
	}
	if cb.Kind != "charge" {
		// Refunds are the refund step's to record; their callbacks are
		// acknowledged so the provider stops sending them.
		s.log.InfoContext(r.Context(), "payment callback", "provider", provider, "kind", cb.Kind, "order_id", o.ID, "status", cb.Status)
		return o, nil
	}
	// The answer is not the engine's write's own (a stale callback is a 200
	// with the order, not the write's refusal), so the response is stored
	// after it, not inside it: applying a callback twice changes nothing.
	ctx := engine.WithIdem(r.Context(), nil)
	return run.ChargeResult(ctx, o.ID, provider, allot.PaymentResult{Status: cb.Status, PaymentID: cb.PaymentID, Reason: cb.Reason})
}

// sellerDecision applies a seller's later answer on a paid order.
func (s *Server) sellerDecision(r *nethttp.Request) (any, error) {
	run, err := s.runner()
	if err != nil {
		return nil, err
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if s.wf.SellerToken == "" || !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(s.wf.SellerToken)) != 1 {
		return nil, allot.Errorf(allot.CodeUnauthorized, "seller decisions need the seller's token in an Authorization: Bearer header")
	}
	var in allot.SellerAnswer
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	if in.Decision != allot.SellerAccepted && in.Decision != allot.SellerRejected {
		return nil, allot.Invalid("decision", "decision must be %q or %q", allot.SellerAccepted, allot.SellerRejected)
	}
	if utf8.RuneCountInString(in.Reason) > 1000 || utf8.RuneCountInString(in.Reference) > 200 {
		return nil, allot.Invalid("reason", "reason may be at most 1000 characters and reference 200")
	}
	return run.SellerAnswer(r.Context(), r.PathValue("id"), in)
}

type deadLetterPage struct {
	DeadLetters []workflow.DeadLetter `json:"dead_letters"`
	NextCursor  string                `json:"next_cursor,omitempty"`
}

func (s *Server) listDeadLetters(r *nethttp.Request) (any, error) {
	run, err := s.runner()
	if err != nil {
		return nil, err
	}
	limit, err := queryInt(r, "limit")
	if err != nil {
		return nil, err
	}
	if limit == 0 {
		limit = engine.DefaultPage
	}
	if limit < 1 || limit > engine.MaxPage {
		return nil, allot.Invalid("limit", "limit must be between 1 and %d", engine.MaxPage)
	}
	var before int64
	if c := r.URL.Query().Get("cursor"); c != "" {
		if before, err = strconv.ParseInt(c, 10, 64); err != nil || before < 1 {
			return nil, allot.Invalid("cursor", "cursor must be a next_cursor this endpoint gave")
		}
	}
	ds, err := run.DeadLetters(r.Context(), before, limit)
	if err != nil {
		return nil, err
	}
	p := deadLetterPage{DeadLetters: ds}
	if n := len(ds); n == limit {
		p.NextCursor = fmt.Sprint(ds[n-1].ID)
	}
	return p, nil
}

func (s *Server) retryDeadLetter(r *nethttp.Request) (any, error) {
	run, err := s.runner()
	if err != nil {
		return nil, err
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return nil, allot.Errorf(allot.CodeNotFound, "dead letter %q does not exist", r.PathValue("id"))
	}
	return run.Retry(r.Context(), id)
}
