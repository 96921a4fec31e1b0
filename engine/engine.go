// Package engine is Allot's capacity accounting and order state machine.
//
// Every write follows one pattern: lock the touched buckets in BucketKey
// order, decide in memory, write the results, append the events, store the
// idempotent response, commit. The database is the source of truth; the
// engine caches only what never changes (a resource's kind, default capacity
// and price), so several engines on one PostgreSQL stay correct.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot"
)

// Limits on requests, so that one request cannot ask for unbounded work.
const (
	MaxLines       = 100
	MaxQuantity    = 1_000_000
	MaxCapacity    = 1_000_000_000
	MaxStayNights  = 366
	MaxRangeNights = 3 * 366
	MaxSlots       = 1000
	DefaultHoldTTL = 10 * time.Minute
	MaxHoldTTL     = 7 * 24 * time.Hour
	maxAttempts    = 8
)

// Options configure an Engine.
type Options struct {
	// Now is the clock; time.Now when nil. Tests move it to expire holds.
	Now    func() time.Time
	Logger *slog.Logger
	// Batching groups concurrent writes; the zero value runs each request
	// in its own transaction.
	Batching Batching
	// Workflow, when its Scheduler is set, carries orders through payment,
	// the seller and the notification.
	Workflow Workflow
}

// Engine applies Allot's rules on a Store.
type Engine struct {
	store     allot.Store
	now       func() time.Time
	log       *slog.Logger
	resources sync.Map // id -> allot.Resource; only immutable fields are used
	metrics   metrics
	wf        Workflow
	// sequencing counts running background sequencers.
	sequencing atomic.Int32
	// serial: the store runs one write transaction at a time, so each batch
	// numbers its own events (sequenceIn).
	serial bool
	// sequenceWarned is when a batch last logged that it could not number
	// its events (unix ns): once in 10 s is enough.
	sequenceWarned atomic.Int64
	// sweepWarned is when Sweep last logged holds it could not release.
	sweepWarned atomic.Int64
	// inlineOffUntil: after a batch failed to number its events, batches
	// leave numbering to the background sequencer until then (unix ns).
	inlineOffUntil atomic.Int64

	batch       *batcher
	batchMu     sync.RWMutex
	batchClosed bool
	closeOnce   sync.Once
}

// New returns an engine on s. With batching on, Close stops its workers.
func New(s allot.Store, o Options) *Engine {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	// Microseconds: what both stores keep, so a stored response and a later
	// read agree to the digit.
	if o.Workflow.PaymentTimeout <= 0 {
		o.Workflow.PaymentTimeout = DefaultPaymentTimeout
	}
	if o.Workflow.SellerTimeout <= 0 {
		o.Workflow.SellerTimeout = DefaultSellerTimeout
	}
	e := &Engine{store: s, now: func() time.Time { return o.Now().UTC().Truncate(time.Microsecond) }, log: o.Logger, wf: o.Workflow}
	_, e.serial = s.(allot.SerialWriter)
	if o.Batching.Workers > 0 {
		e.startBatcher(o.Batching)
	}
	return e
}

// Store returns the engine's store, for reads that need no rule.
func (e *Engine) Store() allot.Store { return e.store }

// Now returns the engine's clock reading.
func (e *Engine) Now() time.Time { return e.now() }

// Idem ties one write to an Idempotency-Key claim. The engine stores the
// response that Render makes of the write's result in the same transaction
// as the write's effect, so a key is completed exactly when its effect
// commits: a crash can never leave an effect without its stored response.
type Idem struct {
	Key, Token string
	// Render makes the response (status and body) for a result or a
	// domain error.
	Render func(v any, err error) (int, []byte)
	// Completed is set once the response is committed.
	Completed bool
	// OnlyEffects stores the response only when the write had an effect:
	// a refused request leaves the key free for a corrected one.
	OnlyEffects bool
}

type idemKey struct{}

// WithIdem returns a context whose engine write completes idem.
func WithIdem(ctx context.Context, idem *Idem) context.Context {
	return context.WithValue(ctx, idemKey{}, idem)
}

func idemFrom(ctx context.Context) *Idem {
	i, _ := ctx.Value(idemKey{}).(*Idem)
	return i
}

// NewID returns a prefixed, time-ordered, random id (so listing by id lists
// by creation).
func NewID(prefix string) string {
	var b [14]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	_, _ = rand.Read(b[6:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// resource returns a resource's immutable description, cached.
func (e *Engine) resource(ctx context.Context, r allot.Reader, id string) (allot.Resource, error) {
	return e.lookupResource(ctx, r, id, true)
}

// resourceNoCache is resource for a reader inside a transaction that may
// still roll back (the resource may be its own insert): it uses the cache
// but never fills it.
func (e *Engine) resourceNoCache(ctx context.Context, r allot.Reader, id string) (allot.Resource, error) {
	return e.lookupResource(ctx, r, id, false)
}

func (e *Engine) lookupResource(ctx context.Context, r allot.Reader, id string, fill bool) (allot.Resource, error) {
	if v, ok := e.resources.Load(id); ok {
		return v.(allot.Resource), nil
	}
	res, err := r.GetResource(ctx, id)
	if errors.Is(err, allot.ErrNotFound) {
		return res, allot.Errorf(allot.CodeNotFound, "resource %q does not exist", id)
	}
	if err != nil {
		return res, err
	}
	res.Slots = nil // slots and their capacity change; never serve them from cache
	if fill {
		e.resources.Store(id, res)
	}
	return res, nil
}

// event builds an outbox event with a JSON payload.
func (e *Engine) event(typ, resourceID, orderID, holdID string, payload any) allot.Event {
	b, err := json.Marshal(payload)
	if err != nil {
		panic(fmt.Sprintf("engine: event payload %T does not marshal: %v", payload, err))
	}
	return allot.Event{ID: NewID("evt"), Type: typ, ResourceID: resourceID, OrderID: orderID, HoldID: holdID, At: e.now(), Payload: b}
}

// locked is the set of buckets a transaction holds, by key.
type locked map[allot.BucketKey]*allot.Bucket

// expireOn releases the held claims of expired holds on the locked buckets
// keys, marks those holds expired, and reports whether anything was freed.
// Claims of those holds on buckets not locked here are left to the sweeper,
// so that locks are still only taken in key order.
func (e *Engine) expireOn(ctx context.Context, w *wtx, keys []allot.BucketKey) (bool, error) {
	claims, err := w.ExpiredHoldClaims(ctx, keys, e.now())
	if err != nil || len(claims) == 0 {
		return false, err
	}
	holds := map[string]bool{}
	var ids []string
	for _, c := range claims {
		w.lk[c.BucketKey].Held -= c.Quantity
		if !holds[c.OwnerID] {
			holds[c.OwnerID] = true
			ids = append(ids, c.OwnerID)
		}
	}
	if err := w.DeleteClaims(ctx, claims); err != nil {
		return false, err
	}
	sort.Strings(ids)
	return true, e.markExpired(ctx, w, ids)
}

func (e *Engine) markExpired(ctx context.Context, w *wtx, ids []string) error {
	for _, id := range ids {
		h, err := w.LockHold(ctx, id)
		if err != nil {
			return err
		}
		if h.Status != allot.HoldActive {
			continue
		}
		if err := w.SetHoldStatus(ctx, id, allot.HoldExpired, ""); err != nil {
			return err
		}
		h.Status = allot.HoldExpired
		w.emit(e.event(allot.EventHoldExpired, firstResource(h.Lines), "", id, h))
	}
	return nil
}

func firstResource(ls []allot.Line) string {
	if len(ls) == 0 {
		return ""
	}
	return ls[0].ResourceID
}
