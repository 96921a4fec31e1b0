// Package webhook delivers events to subscribers over HTTP: each delivery
// signed (HMAC-SHA256 over the timestamp and body, with the subscriber's
// secret), retried with exponential backoff for a bounded time, then marked
// failed, where an operator can see it and replay it.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/events"
)

// SignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">".
const SignatureHeader = "Allot-Signature"

// Sign returns the signature header value for body at time t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + mac(secret, ts, body)
}

func mac(secret, ts string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// Verify checks a signature header: the MAC must match and the timestamp
// be within tolerance of now, so a captured delivery cannot be replayed
// later. Receivers call it (or do the same in their language).
func Verify(secret, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return errors.New("webhook: malformed signature header")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("webhook: signature timestamp outside the tolerance")
	}
	if !hmac.Equal([]byte(sig), []byte(mac(secret, ts, body))) {
		return errors.New("webhook: signature mismatch")
	}
	return nil
}

// knownTypes are the event types a webhook may filter on.
var knownTypes = []string{allot.EventResourceCreated, allot.EventCapacityChanged, allot.EventAvailabilityLow, allot.EventAvailabilityUp,
	allot.EventHoldCreated, allot.EventHoldReleased, allot.EventHoldExpired, allot.EventOrderCreated, allot.EventOrderStatus}

// Register adds a subscriber. It receives the events committed after it
// was registered. An empty secret is generated; the secret is returned
// this once.
func Register(ctx context.Context, st allot.Store, rawURL, secret string, types []string) (allot.Webhook, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || len(rawURL) > 2000 {
		return allot.Webhook{}, allot.Invalid("url", "url must be an absolute http or https URL with a host, got %q", rawURL)
	}
	if u.User != nil {
		// It would be sent as Basic auth to wherever the URL points, and
		// shown by GET /v1/webhooks; the signature is the credential.
		return allot.Webhook{}, allot.Invalid("url", "url may not hold a user or password; verify deliveries by their Allot-Signature")
	}
	if secret == "" {
		var b [24]byte
		_, _ = rand.Read(b[:])
		secret = "whsec_" + hex.EncodeToString(b[:])
	} else if len(secret) < 16 || len(secret) > 200 {
		return allot.Webhook{}, allot.Invalid("secret", "secret must be 16 to 200 characters (or absent, to have one made)")
	}
	for i, t := range types {
		if !slices.Contains(knownTypes, t) {
			return allot.Webhook{}, allot.Invalid(fmt.Sprintf("event_types[%d]", i), "unknown event type %q; one of %v", t, knownTypes)
		}
	}
	if types == nil {
		types = []string{}
	}
	cursor, err := st.Cursor(ctx, "change_no") // the sequencer's last number
	if err != nil {
		return allot.Webhook{}, err
	}
	w := allot.Webhook{ID: engine.NewID("whk"), URL: rawURL, Secret: secret, EventTypes: types, Cursor: cursor, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
	return w, st.InsertWebhook(ctx, w)
}

// Replay sends a delivery again: it becomes pending, due now, with its
// attempts reset.
func Replay(ctx context.Context, st allot.Store, webhookID, deliveryID string) (allot.Delivery, error) {
	d, err := st.GetDelivery(ctx, deliveryID)
	if errors.Is(err, allot.ErrNotFound) || (err == nil && d.WebhookID != webhookID) {
		return d, allot.Errorf(allot.CodeNotFound, "webhook %q has no delivery %q", webhookID, deliveryID)
	}
	if err != nil {
		return d, err
	}
	d.Status, d.Attempts, d.NextAttemptAt, d.LastError, d.LastStatus = allot.DeliveryPending, 0, time.Now().UTC(), "", 0
	return d, st.UpdateDelivery(ctx, d, time.Time{})
}

// Config tunes a Dispatcher; zero values take the defaults.
type Config struct {
	RetryFor   time.Duration // retry a delivery for this much backoff in all, then mark it failed (24 h)
	FirstRetry time.Duration // the first backoff, doubling after (1 s)
	MaxBackoff time.Duration // (10 min)
	Timeout    time.Duration // per attempt (10 s)
	Lease      time.Duration // a claimed delivery is this node's for (1 min)
	Workers    int           // deliveries sent at once (8)
	Client     *http.Client
}

// Dispatcher fans events out into deliveries and sends them.
type Dispatcher struct {
	st  allot.Store
	cfg Config
	log *slog.Logger
}

// New returns a dispatcher on st.
func New(st allot.Store, cfg Config, log *slog.Logger) *Dispatcher {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.RetryFor, 24*time.Hour)
	def(&cfg.FirstRetry, time.Second)
	def(&cfg.MaxBackoff, 10*time.Minute)
	def(&cfg.Timeout, 10*time.Second)
	def(&cfg.Lease, time.Minute)
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.Client == nil {
		// A redirect is not a delivery: followed, a POST becomes a GET
		// without the event, and its 2xx would mark the event delivered.
		cfg.Client = &http.Client{Timeout: cfg.Timeout, CheckRedirect: noRedirects}
	}
	if log == nil {
		log = slog.Default()
	}
	return &Dispatcher{st: st, cfg: cfg, log: log}
}

// FanOut records a delivery of every new (sequenced) event for each
// webhook that wants it, and returns how many it recorded.
func (d *Dispatcher) FanOut(ctx context.Context) (int, error) {
	hooks, err := d.st.ListWebhooks(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, h := range hooks {
		evs, err := d.st.EventsAfterChange(ctx, h.Cursor, 500)
		if err != nil || len(evs) == 0 {
			if err != nil {
				return n, err
			}
			continue
		}
		now := time.Now().UTC().Truncate(time.Microsecond)
		var ds []allot.Delivery
		for _, ev := range evs {
			if len(h.EventTypes) > 0 && !slices.Contains(h.EventTypes, ev.Type) {
				continue
			}
			ds = append(ds, allot.Delivery{ID: engine.NewID("dlv"), EventID: ev.ID, EventType: ev.Type, ChangeNo: ev.ChangeNo,
				Body: events.Message(ev), NextAttemptAt: now, CreatedAt: now})
		}
		if err := d.st.AddDeliveries(ctx, h.ID, ds, evs[len(evs)-1].ChangeNo); err != nil {
			return n, err
		}
		n += len(ds)
	}
	return n, nil
}

// Deliver sends the deliveries that are due, once each, and returns how
// many it attempted.
func (d *Dispatcher) Deliver(ctx context.Context) (int, error) {
	now := time.Now().UTC()
	ds, err := d.st.ClaimDeliveries(ctx, now, now.Add(d.cfg.Lease), 100)
	if err != nil || len(ds) == 0 {
		return 0, err
	}
	hooks := map[string]allot.Webhook{}
	var mu sync.Mutex
	hook := func(id string) (allot.Webhook, error) {
		mu.Lock()
		defer mu.Unlock()
		if h, ok := hooks[id]; ok {
			return h, nil
		}
		h, err := d.st.GetWebhook(ctx, id)
		if err == nil {
			hooks[id] = h
		}
		return h, err
	}
	sem := make(chan struct{}, d.cfg.Workers)
	var wg sync.WaitGroup
	for _, dl := range ds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			h, err := hook(dl.WebhookID)
			if err != nil {
				return // deleted meanwhile: its deliveries are gone
			}
			d.attempt(ctx, h, dl)
		}()
	}
	wg.Wait()
	return len(ds), nil
}

// attempt sends one delivery and records the outcome.
func (d *Dispatcher) attempt(ctx context.Context, h allot.Webhook, dl allot.Delivery) {
	leased := dl.NextAttemptAt // as claimed: this attempt's lease
	status, err := d.post(ctx, h, dl)
	now := time.Now().UTC().Truncate(time.Microsecond)
	dl.Attempts++
	dl.LastStatus = status
	if err == nil {
		dl.Status, dl.LastError = allot.DeliveryDelivered, ""
	} else {
		dl.LastError = err.Error()
		backoff := d.backoff(dl.Attempts)
		backoff += time.Duration(mrand.Int64N(int64(backoff)/5 + 1)) // jitter, so retries do not stampede
		dl.NextAttemptAt = now.Add(backoff)
		dl.Status = allot.DeliveryPending
		if d.backoffs(dl.Attempts) > d.cfg.RetryFor {
			dl.Status = allot.DeliveryFailed
		}
	}
	switch err := d.st.UpdateDelivery(context.WithoutCancel(ctx), dl, leased); {
	case errors.Is(err, allot.ErrNotFound):
		// Replayed or deleted during the attempt: what was done since
		// stands (a replay sends it again).
		d.log.InfoContext(ctx, "a webhook delivery changed during its attempt; its outcome is not recorded", "delivery", dl.ID, "status", dl.Status)
		return
	case err != nil:
		d.log.ErrorContext(ctx, "recording a webhook delivery", "delivery", dl.ID, "err", err)
	}
	if dl.Status == allot.DeliveryFailed {
		d.log.WarnContext(ctx, "webhook delivery failed for good", "webhook", h.ID, "delivery", dl.ID, "event", dl.EventID, "attempts", dl.Attempts, "err", dl.LastError)
	}
}

// backoff is the wait after the n-th failed try (n >= 1), jitter aside:
// FirstRetry doubling, at most MaxBackoff.
func (d *Dispatcher) backoff(n int) time.Duration {
	return min(time.Duration(float64(d.cfg.FirstRetry)*math.Pow(2, float64(n-1))), d.cfg.MaxBackoff)
}

// backoffs is the waiting that attempts failed tries add up to, jitter
// aside. The retry window is counted in it, not from the delivery's
// creation: a replayed delivery gets the whole window again, and one
// that waited while no dispatcher ran still gets every retry.
func (d *Dispatcher) backoffs(attempts int) time.Duration {
	var total time.Duration
	for n := 1; n <= attempts; n++ {
		total += d.backoff(n)
		if total > d.cfg.RetryFor {
			break
		}
	}
	return total
}

func (d *Dispatcher) post(ctx context.Context, h allot.Webhook, dl allot.Delivery) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", h.URL, bytes.NewReader(dl.Body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "allot-webhooks")
	req.Header.Set(SignatureHeader, Sign(h.Secret, time.Now(), dl.Body))
	req.Header.Set("Allot-Event-Id", dl.EventID)
	req.Header.Set("Allot-Event-Type", dl.EventType)
	req.Header.Set("Allot-Delivery-Id", dl.ID)
	res, err := d.cfg.Client.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	if res.StatusCode/100 != 2 {
		return res.StatusCode, fmt.Errorf("the subscriber answered %d", res.StatusCode)
	}
	return res.StatusCode, nil
}

// Run fans out and delivers every interval until ctx ends.
func (d *Dispatcher) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := d.FanOut(ctx); err != nil && ctx.Err() == nil {
			d.log.ErrorContext(ctx, "fanning events out to webhooks", "err", err)
		}
		if _, err := d.Deliver(ctx); err != nil && ctx.Err() == nil {
			d.log.ErrorContext(ctx, "delivering webhooks", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
