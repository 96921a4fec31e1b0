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
}

// Engine applies Allot's rules on a Store.
type Engine struct {
	store     allot.Store
	now       func() time.Time
	log       *slog.Logger
	resources sync.Map // id -> allot.Resource; only immutable fields are used
}

// New returns an engine on s.
func New(s allot.Store, o Options) *Engine {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	// Microseconds: what both stores keep, so a stored response and a later
	// read agree to the digit.
	return &Engine{store: s, now: func() time.Time { return o.Now().UTC().Truncate(time.Microsecond) }, log: o.Logger}
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

// write runs fn in a transaction. fn returns a result, or a domain error
// (*allot.Error) after writing only what may stand on its own (such as
// releasing expired holds); either commits, with the idempotent response.
// Any other error rolls back. Retryable store errors are retried.
func (e *Engine) write(ctx context.Context, fn func(allot.Tx) (any, error)) (any, error) {
	idem := idemFrom(ctx)
	var result any
	var refusal error
	var err error
	for attempt := 1; ; attempt++ {
		err = e.store.Write(ctx, func(tx allot.Tx) error {
			v, err := fn(tx)
			if err != nil && allot.CodeOf(err) == "" {
				return err
			}
			result, refusal = v, err
			if idem != nil {
				status, body := idem.Render(v, err)
				if err := tx.CompleteIdempotencyKey(ctx, idem.Key, idem.Token, status, body); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			if idem != nil {
				idem.Completed = true
			}
			return result, refusal
		}
		if errors.Is(err, allot.ErrIdempotencyLost) {
			return nil, allot.Errorf(allot.CodeIdempotencyInFlight, "another request with this Idempotency-Key took over; retry to get its response")
		}
		if attempt >= maxAttempts || !e.store.IsRetryable(err) || ctx.Err() != nil {
			return nil, err
		}
		e.log.DebugContext(ctx, "retrying transaction", "attempt", attempt, "err", err)
		time.Sleep(time.Duration(attempt*attempt) * time.Millisecond)
	}
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
	e.resources.Store(id, res)
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

func (e *Engine) lock(ctx context.Context, tx allot.Tx, specs []allot.BucketSpec) (locked, []allot.Bucket, error) {
	sort.Slice(specs, func(i, j int) bool { return specs[i].Less(specs[j].BucketKey) })
	bs, err := tx.LockBuckets(ctx, specs)
	if err != nil {
		return nil, nil, err
	}
	m := make(locked, len(bs))
	for i := range bs {
		m[bs[i].BucketKey] = &bs[i]
	}
	for _, s := range specs {
		if _, ok := m[s.BucketKey]; !ok {
			return nil, nil, allot.Errorf(allot.CodeNotFound, "resource %q has no bucket %q", s.ResourceID, s.Key)
		}
	}
	return m, bs, nil
}

// expireOn releases the held claims of expired holds on the locked buckets
// keys, marks those holds expired, and reports whether anything was freed.
// Claims of those holds on buckets not locked here are left to the sweeper,
// so that locks are still only taken in key order.
func (e *Engine) expireOn(ctx context.Context, tx allot.Tx, lk locked, keys []allot.BucketKey) (bool, error) {
	claims, err := tx.ExpiredHoldClaims(ctx, keys, e.now())
	if err != nil || len(claims) == 0 {
		return false, err
	}
	holds := map[string]bool{}
	var ids []string
	for _, c := range claims {
		lk[c.BucketKey].Held -= c.Quantity
		if !holds[c.OwnerID] {
			holds[c.OwnerID] = true
			ids = append(ids, c.OwnerID)
		}
	}
	if err := tx.DeleteClaims(ctx, claims); err != nil {
		return false, err
	}
	sort.Strings(ids)
	return true, e.markExpired(ctx, tx, ids)
}

func (e *Engine) markExpired(ctx context.Context, tx allot.Tx, ids []string) error {
	var events []allot.Event
	for _, id := range ids {
		h, err := tx.LockHold(ctx, id)
		if err != nil {
			return err
		}
		if h.Status != allot.HoldActive {
			continue
		}
		if err := tx.SetHoldStatus(ctx, id, allot.HoldExpired, ""); err != nil {
			return err
		}
		h.Status = allot.HoldExpired
		events = append(events, e.event(allot.EventHoldExpired, firstResource(h.Lines), "", id, h))
	}
	return tx.AppendEvents(ctx, events)
}

func firstResource(ls []allot.Line) string {
	if len(ls) == 0 {
		return ""
	}
	return ls[0].ResourceID
}

func bucketList(lk locked) []allot.Bucket {
	out := make([]allot.Bucket, 0, len(lk))
	for _, b := range lk {
		out = append(out, *b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j].BucketKey) })
	return out
}
