package events_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/events"
	"github.com/allot/allot/store/sqlite"
)

// TestCreateBookingConsumers: two consumers of one group share the
// partitions of create_booking; every live order becomes confirmed, the
// poison messages land in the dead letters with their reasons, and none
// blocks its partition.
func TestCreateBookingConsumers(t *testing.T) {
	ctx := context.Background()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4),
		kfake.SeedTopics(4, events.TopicCreateBooking))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(st, engine.Options{})
	defer func() { eng.Close(); st.Close() }()

	// Two consumers join the group; wait until both own partitions.
	var mu sync.Mutex
	owned := map[int]int{}
	handled := map[int]int{}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range 2 {
		c, err := events.NewKafkaConsumer(cluster.ListenAddrs(), "seller-proxy", events.TopicCreateBooking, nil,
			kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, a map[string][]int32) {
				mu.Lock()
				owned[i] += len(a[events.TopicCreateBooking])
				mu.Unlock()
			}))
		if err != nil {
			t.Fatal(err)
		}
		confirm := events.ConfirmBookings(eng, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Run(runCtx, func(ctx context.Context, ev allot.Event) error {
				mu.Lock()
				handled[i]++
				mu.Unlock()
				return confirm(ctx, ev)
			})
		}()
	}
	defer func() { stop(); wg.Wait() }()
	waitFor(t, 15*time.Second, "both consumers to own partitions", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return owned[0] > 0 && owned[1] > 0
	})

	c := 100
	if _, err := eng.CreateResource(ctx, engine.ResourceInput{ID: "r", Name: "r", Kind: allot.KindStock, Capacity: &c}); err != nil {
		t.Fatal(err)
	}
	var live, cancelled []string
	for i := range 36 {
		// Resources spread the keys over the partitions.
		res := fmt.Sprintf("r%d", i%12)
		if i < 12 {
			if _, err := eng.CreateResource(ctx, engine.ResourceInput{ID: res, Name: res, Kind: allot.KindStock, Capacity: &c}); err != nil {
				t.Fatal(err)
			}
		}
		o, err := eng.CreateOrder(ctx, engine.OrderInput{Lines: []allot.Line{{ResourceID: res, Quantity: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		if i%7 == 0 {
			if _, err := eng.CancelOrder(ctx, o.ID, "changed mind"); err != nil {
				t.Fatal(err)
			}
			cancelled = append(cancelled, o.ID)
			continue
		}
		live = append(live, o.ID)
	}
	// Poison, in the middle of the stream.
	pro, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer pro.Close()
	poison := []*kgo.Record{
		{Topic: events.TopicCreateBooking, Key: []byte("r1"), Value: []byte("{not json")},
		{Topic: events.TopicCreateBooking, Key: []byte("r2"), Value: []byte(`{"id":"evt_x","type":"order.created","order_id":"ord_missing"}`)},
		{Topic: events.TopicCreateBooking, Key: []byte("r3"), Value: []byte(`{"id":"evt_y","type":"hold.created","hold_id":"hld_1"}`)},
	}
	if err := pro.ProduceSync(ctx, poison...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	// The real relay publishes create_booking.
	if _, err := eng.Sequence(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	sink, err := events.NewKafka(cluster.ListenAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	relay := events.NewRelay(st, sink, nil)
	var cursor int64
	for {
		n, err := relay.Step(ctx, &cursor)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	waitFor(t, 20*time.Second, "every live order to be confirmed", func() bool {
		for _, id := range live {
			if o, err := st.GetOrder(ctx, id); err != nil || o.Status != allot.OrderConfirmed {
				return false
			}
		}
		return true
	})
	for _, id := range cancelled {
		if o, _ := st.GetOrder(ctx, id); o.Status != allot.OrderCancelled {
			t.Fatalf("cancelled order %s is now %s", id, o.Status)
		}
	}
	// The dead letters hold the three poison messages, with reasons.
	dlq, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.ConsumeTopics(events.TopicDeadLetters),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	var reasons []string
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for len(reasons) < 3 && pctx.Err() == nil {
		dlq.PollFetches(pctx).EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == "dead-letter-reason" {
					reasons = append(reasons, string(h.Value))
				}
			}
		})
	}
	joined := strings.Join(reasons, " | ")
	for _, want := range []string{"not an Allot event", "ord_missing does not exist", `not "hold.created"`} {
		if !strings.Contains(joined, want) {
			t.Fatalf("dead-letter reasons %q lack %q", joined, want)
		}
	}
	mu.Lock()
	t.Logf("consumers handled %v messages; %d dead letters", handled, len(reasons))
	if handled[0] == 0 || handled[1] == 0 {
		t.Errorf("one consumer handled everything (%v): the group did not share the partitions", handled)
	}
	mu.Unlock()
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// transitionErr is a Transitioner that answers err.
type transitionErr struct{ err error }

func (s transitionErr) Transition(ctx context.Context, id string, to allot.OrderStatus, cause string) (allot.Order, error) {
	return allot.Order{ID: id, Status: to}, s.err
}

// TestConfirmBookingsClassifies: what create_booking's handler does with
// each answer of the engine: done, retried, or dead-lettered (poison).
// Only what no retry can fix is poison.
func TestConfirmBookingsClassifies(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		retry  bool // an error, not poison
		poison bool
	}{
		{name: "confirmed"},
		{name: "already moved on", err: allot.Errorf(allot.CodeInvalidTransition, "order is cancelled")},
		{name: "internal failure", err: errors.New("connection refused"), retry: true},
		{name: "commit outcome unknown", err: allot.Errorf(allot.CodeOutcomeUnknown, "the database did not confirm"), retry: true},
		{name: "no such order", err: allot.Errorf(allot.CodeNotFound, "no order"), poison: true},
		{name: "other refusal", err: allot.Errorf(allot.CodeInvalid, "bad"), poison: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := events.ConfirmBookings(transitionErr{c.err}, nil)(context.Background(),
				allot.Event{ID: "evt_1", Type: allot.EventOrderCreated, OrderID: "ord_1"})
			var p *events.Poison
			if isPoison := errors.As(err, &p); isPoison != c.poison || (err != nil && !isPoison) != c.retry {
				t.Fatalf("handler = %v; want poison %v, retry %v", err, c.poison, c.retry)
			}
		})
	}
}
