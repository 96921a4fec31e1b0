package engine

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"runtime/debug"
	"sort"
	"sync"
	"time"

	"github.com/allot/allot"
)

// Batching configures how the engine groups concurrent writes on buckets
// (holds, orders, cancels, releases) into shared transactions.
//
// A row lock held across a commit caps one hot bucket at about one commit
// per fsync. A batch locks the union of its requests' buckets once, in key
// order, decides every request in memory in arrival order (those that
// arrive meanwhile for buckets it holds join it: joiner), writes all the
// results and commits once: one fsync for the whole batch. A request's
// refusal is only its own answer; a database error fails the batch, whose
// requests are then run one by one so that one bad request cannot fail its
// neighbours.
type Batching struct {
	// Workers is how many batches may run at once. Requests are spread
	// over workers by the resource of their first line, so requests for a
	// hot resource meet in one queue. Zero disables batching: every
	// request is its own transaction (the naive engine).
	Workers int
	// MaxSize bounds the requests in one batch (default 256).
	MaxSize int
	// Linger is how long a batch may wait for company after its first
	// request. Zero means natural batching only: a batch takes whatever
	// queued while the previous one ran, and never waits; either way,
	// requests that come while it runs may still join it (joiner).
	Linger time.Duration
}

// op is one write request: prepared outside any transaction (validation,
// reading the lines of the hold or order it acts on), then applied inside a
// batch transaction on the batch's locked buckets.
type op struct {
	idem  *Idem
	specs []allot.BucketSpec
	shard string
	// apply decides and writes through w. It returns a result, or a domain
	// error after changing nothing in w but what may stand on its own
	// (releasing expired holds); any other error fails the batch.
	apply func(ctx context.Context, w *wtx) (any, error)
	done  chan opResult
}

type opResult struct {
	v   any
	err error
	// stored: the op's response was stored with its Idempotency-Key.
	stored bool
}

// wtx is a write transaction shared by a batch's requests: the locked
// buckets as they stand after the requests applied so far, and the events
// they appended.
type wtx struct {
	allot.Tx
	lk     locked
	orig   map[allot.BucketKey]allot.Bucket
	events []allot.Event
	steps  []allot.Step
}

func (w *wtx) emit(es ...allot.Event) { w.events = append(w.events, es...) }

// need checks that every key is locked in this transaction; a key that is
// not is a bucket that does not exist.
func (w *wtx) need(keys []allot.BucketKey) (allot.BucketKey, bool) {
	for _, k := range keys {
		if _, ok := w.lk[k]; !ok {
			return k, false
		}
	}
	return allot.BucketKey{}, true
}

// dirty lists the buckets the batch changed, in key order.
func (w *wtx) dirty() []allot.Bucket {
	var out []allot.Bucket
	for k, b := range w.lk {
		if *b != w.orig[k] {
			out = append(out, *b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j].BucketKey) })
	return out
}

// batcher queues ops per worker.
type batcher struct {
	cfg     Batching
	queues  []chan *op
	wg      sync.WaitGroup
	stopped chan struct{}
}

func (e *Engine) startBatcher(cfg Batching) {
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = 256
	}
	b := &batcher{cfg: cfg, stopped: make(chan struct{})}
	for range cfg.Workers {
		q := make(chan *op, 4*cfg.MaxSize)
		b.queues = append(b.queues, q)
		b.wg.Add(1)
		go e.batchLoop(b, q)
	}
	e.batch = b
}

// Close stops the batch workers after the queued requests are done.
func (e *Engine) Close() {
	if e.batch == nil {
		return
	}
	e.closeOnce.Do(func() {
		e.batchMu.Lock()
		for _, q := range e.batch.queues {
			close(q)
		}
		e.batchClosed = true
		e.batchMu.Unlock()
		e.batch.wg.Wait()
	})
}

func (e *Engine) batchLoop(b *batcher, q chan *op) {
	defer b.wg.Done()
	// carry is a request taken from the queue by a batch it could not
	// join (joiner): the next batch starts with it.
	var carry *op
	for {
		first := carry
		carry = nil
		if first == nil {
			var ok bool
			if first, ok = <-q; !ok {
				return
			}
		}
		ops := []*op{first}
		var deadline <-chan time.Time
		var timer *time.Timer
		if b.cfg.Linger > 0 {
			timer = time.NewTimer(b.cfg.Linger)
			deadline = timer.C
		}
	gather:
		for len(ops) < b.cfg.MaxSize {
			select {
			case o, ok := <-q:
				if !ok {
					break gather
				}
				ops = append(ops, o)
			default:
				if deadline == nil {
					break gather
				}
				select {
				case o, ok := <-q:
					if !ok {
						break gather
					}
					ops = append(ops, o)
				case <-deadline:
					break gather
				}
			}
		}
		if timer != nil {
			timer.Stop()
		}
		e.runBatch(ops, joiner(q, &carry, b.cfg.MaxSize))
	}
}

// joiner returns what a batch calls, after applying the requests it has,
// to take one more from q: a request that arrived while the batch ran and
// whose buckets the batch holds locked joins it and commits with it,
// rather than waiting for the whole of this batch and then its own. The
// first that needs a bucket the batch does not hold is left in carry for
// the next batch, and joining stops there, so requests are still decided in
// arrival order. A batch's size stays bounded by maxSize.
func joiner(q chan *op, carry **op, maxSize int) func(w *wtx, size int) *op {
	return func(w *wtx, size int) *op {
		if *carry != nil || size >= maxSize {
			return nil
		}
		select {
		case o, ok := <-q:
			if !ok {
				return nil
			}
			for _, s := range o.specs {
				if _, locked := w.lk[s.BucketKey]; !locked {
					*carry = o
					return nil
				}
			}
			return o
		default:
			return nil
		}
	}
}

// do runs an op: through the batcher when batching is on, else on its own.
func (e *Engine) do(ctx context.Context, o *op) (any, error) {
	o.idem = idemFrom(ctx)
	if e.batch == nil {
		e.runOne(o)
	} else {
		o.done = make(chan opResult, 1)
		h := fnv.New32a()
		h.Write([]byte(o.shard))
		e.batchMu.RLock()
		if e.batchClosed {
			e.batchMu.RUnlock()
			return nil, errors.New("engine: closed")
		}
		e.batch.queues[int(h.Sum32())%len(e.batch.queues)] <- o
		e.batchMu.RUnlock()
		// The op runs even if the caller goes away: it may commit, and its
		// Idempotency-Key then answers the retry.
		r := <-o.done
		return r.v, r.err
	}
	r := <-o.done
	return r.v, r.err
}

func (e *Engine) runOne(o *op) {
	if o.done == nil {
		o.done = make(chan opResult, 1)
	}
	e.runBatch([]*op{o}, nil)
}

// batchTimeout bounds one batch transaction.
const batchTimeout = 30 * time.Second

// runBatch applies ops in one transaction and answers each. If the
// transaction fails, a batch of several is split into single ops (so the
// failure stays with the op that caused it); a single op is retried when the
// failure is transient.
func (e *Engine) runBatch(ops []*op, join func(w *wtx, size int) *op) {
	b := &batch{ops: ops, results: make([]opResult, len(ops)), join: join}
	start := time.Now()
	var err error
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		err = e.store.Write(ctx, func(tx allot.Tx) (err error) {
			// A panic in an op is that batch's failure: the transaction
			// rolls back and the worker lives on.
			defer func() {
				if v := recover(); v != nil {
					e.log.Error("panic applying a batch", "panic", v, "stack", string(debug.Stack()))
					err = fmt.Errorf("engine: panic applying a batch: %v", v)
				}
			}()
			return e.applyBatch(ctx, tx, b)
		})
		cancel()
		ops = b.ops // with those that joined, even if it failed
		if err == nil || len(ops) > 1 || attempt >= maxAttempts || !e.store.IsRetryable(err) {
			break
		}
		e.log.Debug("retrying transaction", "attempt", attempt, "err", err)
		time.Sleep(time.Duration(attempt*attempt) * time.Millisecond)
	}
	e.metrics.batch(len(ops), time.Since(start), err)
	if errors.Is(err, allot.ErrOutcomeUnknown) {
		// The batch may have committed: running its requests again could
		// book twice, or refuse a client the capacity it was just given.
		// Each is told so; one with an Idempotency-Key learns the outcome
		// by retrying with it.
		e.log.Error("a batch's commit outcome is unknown; its requests are answered so, not run again", "size", len(ops), "err", err)
		for _, o := range ops {
			o.done <- opResult{err: allot.Errorf(allot.CodeOutcomeUnknown,
				"the database did not confirm whether this request took effect; retry it with the same Idempotency-Key to learn what happened, or look it up before trying again")}
		}
		return
	}
	if err != nil && len(ops) > 1 {
		e.log.Warn("batch failed; running its requests one by one", "size", len(ops), "err", err)
		for _, o := range ops {
			e.runBatch([]*op{o}, nil)
		}
		return
	}
	for i, o := range ops {
		r := b.results[i]
		if err != nil {
			r = opResult{err: err}
			if errors.Is(err, allot.ErrIdempotencyLost) {
				r.err = allot.Errorf(allot.CodeIdempotencyInFlight, "another request with this Idempotency-Key took over; retry to get its response")
			}
		} else if o.idem != nil && r.stored {
			o.idem.Completed = true
		}
		o.done <- r
	}
}

// batch is the requests of one transaction and their results.
type batch struct {
	ops     []*op
	results []opResult
	// join, if set, gives a request that may join the batch, or nil
	// (joiner). One that joins is in ops at once: if the batch then fails,
	// it is run again on its own with the others.
	join func(w *wtx, size int) *op
}

// applyBatch applies b's requests, and those that join it, in tx.
func (e *Engine) applyBatch(ctx context.Context, tx allot.Tx, b *batch) error {
	seen := map[allot.BucketKey]bool{}
	var specs []allot.BucketSpec
	for _, o := range b.ops {
		for _, s := range o.specs {
			if !seen[s.BucketKey] {
				seen[s.BucketKey] = true
				specs = append(specs, s)
			}
		}
	}
	sort.Slice(specs, func(i, j int) bool { return specs[i].Less(specs[j].BucketKey) })
	var bs []allot.Bucket
	if len(specs) > 0 {
		var err error
		if bs, err = tx.LockBuckets(ctx, specs); err != nil {
			return err
		}
	}
	w := &wtx{Tx: tx, lk: make(locked, len(bs)), orig: make(map[allot.BucketKey]allot.Bucket, len(bs))}
	for i := range bs {
		w.lk[bs[i].BucketKey] = &bs[i]
		w.orig[bs[i].BucketKey] = bs[i]
	}
	for i := 0; ; i++ {
		if i == len(b.ops) {
			var o *op
			if b.join != nil {
				o = b.join(w, len(b.ops))
			}
			if o == nil {
				break
			}
			b.ops, b.results = append(b.ops, o), append(b.results, opResult{})
			e.metrics.joined.Add(1)
		}
		o := b.ops[i]
		v, err := o.apply(ctx, w)
		if err != nil && allot.CodeOf(err) == "" {
			return err
		}
		b.results[i] = opResult{v: v, err: err}
		// An answer is stored with the write; not a retry (it is run again),
		// nor, where the caller asks, a refusal (it may be corrected).
		if o.idem != nil && err != errRetry && (err == nil || !o.idem.OnlyEffects) {
			status, body := o.idem.Render(v, err)
			if err := tx.CompleteIdempotencyKey(ctx, o.idem.Key, o.idem.Token, status, body); err != nil {
				return err
			}
			b.results[i].stored = true
		}
	}
	dirty := w.dirty()
	if err := tx.SaveBuckets(ctx, dirty); err != nil {
		return err
	}
	e.thresholds(w, dirty)
	if err := e.appendOwnEvents(ctx, tx, w.events); err != nil {
		return err
	}
	if len(w.steps) > 0 && e.wf.Scheduler != nil {
		return e.wf.Scheduler.Schedule(ctx, tx, w.steps)
	}
	return nil
}

// thresholds emits availability.low when a bucket's committed availability
// falls to or below its resource's threshold, and availability.restored
// when it climbs back above: once per crossing, since it compares the
// state this transaction locked with the state it commits.
func (e *Engine) thresholds(w *wtx, dirty []allot.Bucket) {
	for _, b := range dirty {
		v, ok := e.resources.Load(b.ResourceID)
		if !ok {
			continue
		}
		t := v.(allot.Resource).Threshold
		if t == nil {
			continue
		}
		before, after := w.orig[b.BucketKey].Available(), b.Available()
		typ := ""
		switch {
		case before > *t && after <= *t:
			typ = allot.EventAvailabilityLow
		case before <= *t && after > *t:
			typ = allot.EventAvailabilityUp
		default:
			continue
		}
		w.emit(e.event(typ, b.ResourceID, "", "", map[string]any{
			"resource_id": b.ResourceID, "key": b.Key, "threshold": *t, "available": after, "capacity": b.Capacity}))
	}
}
