// Package http is Allot's REST API: JSON in, JSON out, every error an RFC
// 9457 problem, every POST idempotent under an Idempotency-Key header.
package http

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	nethttp "net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

// MaxBody bounds a request body.
const MaxBody = 1 << 20

// IdempotencyStaleAfter is how long an in-flight Idempotency-Key claim
// blocks repeats before a repeat may take it over (the first request is then
// presumed dead; if it is not, its transaction rolls back).
const IdempotencyStaleAfter = time.Minute

//go:embed openapi.json
var openapi []byte

// Server serves the API.
type Server struct {
	eng       *engine.Engine
	log       *slog.Logger
	mux       *nethttp.ServeMux
	streams   atomic.Int64
	closing   chan struct{}
	closeOnce sync.Once
	wf        WorkflowOptions
	// publicURL is where clients reach the API (no trailing slash), for
	// the links it writes; empty: from each request's Host.
	publicURL string
}

// SetPublicURL makes the feeds' links start with u (https://book.example.com)
// instead of the request's Host header, which a client sets as it likes.
func (s *Server) SetPublicURL(u string) { s.publicURL = strings.TrimSuffix(u, "/") }

// CloseStreams ends the open event streams, so that a graceful shutdown
// does not wait for them (pass it to http.Server.RegisterOnShutdown).
func (s *Server) CloseStreams() { s.closeOnce.Do(func() { close(s.closing) }) }

// New returns the API on eng.
func New(eng *engine.Engine, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{eng: eng, log: log, mux: nethttp.NewServeMux(), closing: make(chan struct{})}
	for _, r := range s.routes() {
		s.mux.Handle(r.pattern, r.h)
	}
	// Everything no route takes: a problem, 405 with Allow or 404.
	s.mux.HandleFunc("/", s.noRoute)
	return s
}

type route struct {
	pattern string
	h       nethttp.Handler
}

// routes is the API; the OpenAPI document must describe exactly these.
func (s *Server) routes() []route {
	return []route{
		{"GET /healthz", nethttp.HandlerFunc(s.health)},
		{"GET /v1/openapi.json", nethttp.HandlerFunc(serveOpenAPI)},
		{"GET /v1/stats", s.handle(200, s.stats)},
		{"POST /v1/resources", s.handle(201, s.createResource)},
		{"GET /v1/resources/{id}", s.handle(200, s.getResource)},
		{"PUT /v1/resources/{id}/capacity", s.handle(200, s.setCapacity)},
		{"POST /v1/resources/{id}/slots", s.handle(201, s.addSlot)},
		{"GET /v1/resources/{id}/availability", s.handle(200, s.availability)},
		{"POST /v1/holds", s.handle(201, s.createHold)},
		{"GET /v1/holds/{id}", s.handle(200, s.getHold)},
		{"DELETE /v1/holds/{id}", s.handle(204, s.releaseHold)},
		{"POST /v1/orders", s.handle(201, s.createOrder)},
		{"GET /v1/orders", s.handle(200, s.listOrders)},
		{"GET /v1/orders/{id}", s.handle(200, s.getOrder)},
		{"POST /v1/orders/{id}/cancel", s.handle(200, s.cancelOrder)},
		{"POST /v1/orders/{id}/seller-decision", s.handleCredentialed(200, s.sellerDecision)},
		{"POST /v1/customers", s.handle(201, s.createCustomer)},
		{"GET /v1/customers/{id}", s.handle(200, s.getCustomer)},
		{"POST /v1/payments/{provider}/callback", s.callbackOnce(s.handle(200, s.paymentCallback))},
		{"GET /v1/dead-letters", s.handle(200, s.listDeadLetters)},
		{"POST /v1/dead-letters/{id}/retry", s.handle(200, s.retryDeadLetter)},
		{"GET /v1/feeds/orders", s.handle(200, s.ordersFeed)},
		{"GET /v1/events/stream", nethttp.HandlerFunc(s.eventStream)},
		{"POST /v1/webhooks", s.handle(201, s.createWebhook)},
		{"GET /v1/webhooks", s.handle(200, s.listWebhooks)},
		{"GET /v1/webhooks/{id}", s.handle(200, s.getWebhook)},
		{"DELETE /v1/webhooks/{id}", s.handle(204, s.deleteWebhook)},
		{"GET /v1/webhooks/{id}/deliveries", s.handle(200, s.listDeliveries)},
		{"POST /v1/webhooks/{id}/deliveries/{delivery}/replay", s.handle(200, s.replayDelivery)},
	}
}

// ServeHTTP serves a request, turning the mux's own 404 and 405 into
// problems and a panic into a 500 problem.
func (s *Server) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		if v := recover(); v != nil {
			s.log.ErrorContext(r.Context(), "panic serving request", "method", r.Method, "path", r.URL.Path, "panic", v)
			if sw.status == 0 {
				writeBody(sw, 500, problemBody(problemOf(fmt.Errorf("panic: %v", v), r.URL.Path)))
			}
		}
		if s.log.Enabled(r.Context(), slog.LevelDebug) {
			s.log.DebugContext(r.Context(), "request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", time.Since(start))
		}
	}()
	s.mux.ServeHTTP(sw, r)
}

// noRoute answers a request no route takes: 405 with Allow if the path
// exists under other methods, else 404.
func (s *Server) noRoute(w nethttp.ResponseWriter, r *nethttp.Request) {
	var allow []string
	for _, m := range []string{"GET", "POST", "PUT", "DELETE"} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := s.mux.Handler(probe); p != "" && p != "/" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeBody(w, 405, problemBody(problemOf(&allot.Error{Code: codeMethodNotAllowed, Line: -1,
			Detail: fmt.Sprintf("%s does not take %s; it takes %s", r.URL.Path, r.Method, strings.Join(allow, ", "))}, r.URL.Path)))
		return
	}
	writeBody(w, 404, problemBody(problemOf(allot.Errorf(allot.CodeNotFound, "no such path %s; see GET /v1/openapi.json", r.URL.Path), r.URL.Path)))
}

type statusWriter struct {
	nethttp.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() nethttp.ResponseWriter { return w.ResponseWriter }

func (s *Server) health(w nethttp.ResponseWriter, r *nethttp.Request) {
	writeBody(w, 200, []byte("{\"status\":\"ok\"}\n"))
}

// stats reports the write path's counters (batches, their mean size and
// duration), for operators and allot bench.
func (s *Server) stats(r *nethttp.Request) (any, error) { return s.eng.Stats(), nil }

func serveOpenAPI(w nethttp.ResponseWriter, r *nethttp.Request) {
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeBody(w, 200, openapi)
}

// handler is one endpoint's logic: the request in, a result or an error out.
type handler func(r *nethttp.Request) (any, error)

// render makes the response for a result or error. It is pure, so that the
// bytes stored with an Idempotency-Key are the bytes sent.
func render(status int, instance string) func(any, error) (int, []byte) {
	return func(v any, err error) (int, []byte) {
		if err != nil {
			p := problemOf(err, instance)
			return p.Status, problemBody(p)
		}
		if status == 204 {
			return 204, nil
		}
		b, merr := marshal(v)
		if merr != nil {
			p := problemOf(merr, instance)
			return p.Status, problemBody(p)
		}
		return status, b
	}
}

// marshal is json.Marshal without HTML escaping, and with a newline: a
// feed's next link keeps its '&' as clients show and follow it, not \u0026.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// handle wraps an endpoint: POSTs with an Idempotency-Key are claimed,
// executed once, and answered from the stored response when repeated.
func (s *Server) handle(status int, h handler) nethttp.Handler { return s.wrap(status, h, false) }

// handleCredentialed is handle for an endpoint that checks the request's
// Authorization itself (a seller's decision): the credentials are part of
// the request under its Idempotency-Key, so a stored answer is not
// replayed to a request without them. Elsewhere a proxy in front may
// refresh its token between a request and its retry.
func (s *Server) handleCredentialed(status int, h handler) nethttp.Handler {
	return s.wrap(status, h, true)
}

func (s *Server) wrap(status int, h handler, credentialed bool) nethttp.Handler {
	return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		base := render(status, r.URL.Path)
		rend := func(v any, err error) (int, []byte) {
			st, body := base(v, err)
			if st == 401 { // RFC 9110: a 401 names the scheme to use
				w.Header().Set("WWW-Authenticate", `Bearer realm="allot"`)
			}
			if allot.CodeOf(err) == allot.CodeOutcomeUnknown {
				// The database may be back in a moment; the retry learns
				// what was done.
				w.Header().Set("Retry-After", "1")
			}
			return st, body
		}
		if err := checkURL(r); err != nil {
			st, body := rend(nil, err)
			writeBody(w, st, body)
			return
		}
		key := r.Header.Get("Idempotency-Key")
		if k, ok := r.Context().Value(derivedKey{}).(string); ok {
			key = k
		} else if r.Method == nethttp.MethodPost && allot.ReservedIdempotencyKey(key) {
			st, body := rend(nil, &allot.Error{Code: codeMalformed, Field: "Idempotency-Key", Line: -1,
				Detail: fmt.Sprintf("Idempotency-Keys starting %q or %q are Allot's own; choose another", allot.KeyPaymentCallback, allot.KeyOpenActiveOrder)})
			writeBody(w, st, body)
			return
		}
		if r.Method != nethttp.MethodPost || key == "" {
			v, err := h(r)
			s.logInternal(r, err)
			st, body := rend(v, err)
			writeBody(w, st, body)
			return
		}
		s.idempotent(w, r, key, h, rend, credentialed)
	})
}

func (s *Server) logInternal(r *nethttp.Request, err error) {
	if err == nil || allot.CodeOf(err) != "" {
		return
	}
	if r.Context().Err() != nil && errors.Is(err, r.Context().Err()) {
		// The client went away (or its deadline passed): nothing failed
		// here, and nobody is left to answer.
		s.log.DebugContext(r.Context(), "request abandoned by the client", "method", r.Method, "path", r.URL.Path, "err", err)
		return
	}
	s.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
}

func (s *Server) idempotent(w nethttp.ResponseWriter, r *nethttp.Request, key string, h handler, rend func(any, error) (int, []byte), credentialed bool) {
	fail := func(err error) { st, body := rend(nil, err); writeBody(w, st, body) }
	if len(key) > 255 || badText(key) {
		fail(&allot.Error{Code: codeMalformed, Field: "Idempotency-Key", Line: -1, Detail: "the Idempotency-Key header must be valid UTF-8 of at most 255 bytes, without NUL"})
		return
	}
	body, err := io.ReadAll(nethttp.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		fail(jsonFieldError(err))
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	sum := sha256.New()
	fmt.Fprintf(sum, "%s %s\n", r.Method, r.URL.RequestURI())
	sum.Write(body)
	if a := r.Header.Get("Authorization"); credentialed && a != "" {
		fmt.Fprintf(sum, "\nauthorization %s", a)
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	claim := allot.IdempotencyClaim{Key: key, Hash: hex.EncodeToString(sum.Sum(nil)), Token: hex.EncodeToString(tok[:]), At: s.eng.Now()}
	store := s.eng.Store()
	rec, err := store.ClaimIdempotencyKey(r.Context(), claim, IdempotencyStaleAfter)
	switch {
	case err != nil:
		s.logInternal(r, err)
		fail(err)
		return
	case rec != nil && rec.Hash != claim.Hash:
		fail(allot.Errorf(allot.CodeIdempotencyMismatch, "Idempotency-Key %q was first used with another request (method, path or body); use a new key for a new request", key))
		return
	case rec != nil && !rec.Done:
		w.Header().Set("Retry-After", "1")
		fail(allot.Errorf(allot.CodeIdempotencyInFlight, "the first request with Idempotency-Key %q is still in flight; retry shortly to get its response", key))
		return
	case rec != nil:
		w.Header().Set("Idempotent-Replayed", "true")
		writeBody(w, rec.Status, rec.Body)
		return
	}
	idem := &engine.Idem{Key: key, Token: claim.Token, Render: rend}
	v, err := h(r.WithContext(engine.WithIdem(r.Context(), idem)))
	s.logInternal(r, err)
	st, out := rend(v, err)
	if !idem.Completed {
		// The engine did not store a response: either nothing was written
		// (bad input, not found) and the answer is final, or the request
		// failed inside and left no effect, so a retry may run it again.
		ctx := context.WithoutCancel(r.Context())
		// A 401 is about the credentials, not the request: the same key
		// with the right ones must run.
		if st >= 500 || st == nethttp.StatusUnauthorized {
			if rerr := store.ReleaseIdempotencyKey(ctx, key, claim.Token); rerr != nil {
				s.log.ErrorContext(ctx, "releasing idempotency key", "key", key, "err", rerr)
			}
		} else if cerr := store.Write(ctx, func(tx allot.Tx) error { return tx.CompleteIdempotencyKey(ctx, key, claim.Token, st, out) }); cerr != nil {
			s.log.ErrorContext(ctx, "storing idempotent response", "key", key, "err", cerr)
		}
	}
	writeBody(w, st, out)
}

// decode reads a JSON object body strictly: known fields only, right types,
// one value, at most MaxBody bytes, no NUL characters in strings.
func decode(r *nethttp.Request, dst any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		// Media types are case-insensitive; application/jsonp is not JSON.
		if mt, _, err := mime.ParseMediaType(ct); (err != nil && !errors.Is(err, mime.ErrInvalidMediaParameter)) || mt != "application/json" {
			return &allot.Error{Code: codeMediaType, Line: -1, Detail: fmt.Sprintf("the body must be application/json, not %s", ct)}
		}
	}
	body, err := io.ReadAll(nethttp.MaxBytesReader(nil, r.Body, MaxBody))
	if err != nil {
		return jsonFieldError(err)
	}
	if !utf8.Valid(body) {
		// encoding/json would turn the bad bytes into U+FFFD unsaid.
		return malformed("the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonFieldError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return malformed("the body holds more than one JSON value")
	}
	// Databases store no NUL in text; only a \u0000 escape can make one
	// (JSON spells the escape with a lower-case u only, and 0 has no case).
	if bytes.Contains(body, []byte(`\u0000`)) && hasNUL(body) {
		return malformed("strings may not contain the NUL character (\\u0000)")
	}
	return nil
}

// hasNUL reports whether any string in a JSON document holds a NUL.
func hasNUL(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		if s, ok := tok.(string); ok && strings.ContainsRune(s, 0) {
			return true
		}
	}
}

// badText reports text no store can keep: invalid UTF-8 or a NUL.
func badText(s string) bool { return !utf8.ValidString(s) || strings.ContainsRune(s, 0) }

// checkURL refuses a path or query string with text no store can keep.
func checkURL(r *nethttp.Request) error {
	if badText(r.URL.Path) {
		return malformed("the path holds invalid UTF-8 or a NUL character")
	}
	for name, vs := range r.URL.Query() {
		for _, v := range vs {
			if badText(name) || badText(v) {
				return &allot.Error{Code: codeMalformed, Field: name, Line: -1, Detail: fmt.Sprintf("query parameter %q holds invalid UTF-8 or a NUL character", name)}
			}
		}
	}
	return nil
}

// decodeOptional is decode for a body that may be empty.
func decodeOptional(r *nethttp.Request, dst any) error {
	body, err := io.ReadAll(nethttp.MaxBytesReader(nil, r.Body, MaxBody))
	if err != nil {
		return jsonFieldError(err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return decode(r, dst)
}

func queryDate(r *nethttp.Request, name string) (*allot.Date, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return nil, nil
	}
	d, err := allot.ParseDate(v)
	if err != nil {
		return nil, allot.Invalid(name, "%v", err)
	}
	return &d, nil
}

func queryInt(r *nethttp.Request, name string) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, allot.Invalid(name, "%s must be an integer, got %q", name, v)
	}
	return n, nil
}
