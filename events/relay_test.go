package events_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/events"
	"github.com/allot/allot/store/sqlite"
)

// delivery is one event as a consumer received it.
type delivery struct {
	ID, Key  string
	ChangeNo int64
}

// crashy kills its relay at random moments: half-way through a publish, or
// after the sink acknowledged and before the relay saved its cursor.
type crashy struct {
	events.Sink
	mu     sync.Mutex
	rnd    *mrand.Rand
	cancel context.CancelFunc
	kills  int
}

func (c *crashy) Publish(ctx context.Context, evs []allot.Event) error {
	c.mu.Lock()
	roll, cancel := c.rnd.IntN(5), c.cancel
	c.mu.Unlock()
	switch roll {
	case 0:
		if len(evs) > 1 {
			_ = c.Sink.Publish(ctx, evs[:len(evs)/2])
		}
		c.kills++
		cancel()
		return errors.New("killed half-way through a publish")
	case 1:
		err := c.Sink.Publish(ctx, evs)
		c.kills++
		cancel() // the cursor write that follows fails: re-sent after restart
		return err
	}
	return c.Sink.Publish(ctx, evs)
}

// relayUnderCrashes books from several goroutines while relays are killed
// and restarted, then drains, consumes everything and checks it.
func relayUnderCrashes(t *testing.T, sink events.Sink, consume func(want int) []delivery) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(st, engine.Options{Batching: engine.Batching{Workers: 1}})
	t.Cleanup(func() { eng.Close(); st.Close() })
	for i := range 4 {
		c := 1000
		if _, err := eng.CreateResource(ctx, engine.ResourceInput{ID: fmt.Sprintf("r%d", i), Name: "r", Kind: allot.KindStock, Capacity: &c}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				res := fmt.Sprintf("r%d", (w+i)%4)
				o, err := eng.CreateOrder(ctx, engine.OrderInput{Lines: []allot.Line{{ResourceID: res, Quantity: 1}}})
				if err != nil {
					t.Error(err)
					return
				}
				if i%4 == 0 {
					if _, err := eng.CancelOrder(ctx, o.ID, "test"); err != nil {
						t.Error(err)
					}
				}
				if _, err := eng.Sequence(ctx, 1000); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	c := &crashy{Sink: sink, rnd: mrand.New(mrand.NewPCG(1, 2))}
	runs := 0
	for running := true; running; runs++ {
		select {
		case <-done:
			running = false
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		c.mu.Lock()
		c.cancel = cancel
		c.mu.Unlock()
		r := events.NewRelay(st, c, nil)
		r.Batch, r.Idle = 7, time.Millisecond
		r.Run(rctx) // returns when killed or timed out
		cancel()
	}
	if _, err := eng.Sequence(ctx, 100000); err != nil {
		t.Fatal(err)
	}
	// A last relay, never killed, catches up.
	all, err := st.EventsAfterChange(ctx, 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	last := all[len(all)-1].ChangeNo
	r := events.NewRelay(st, sink, nil)
	cursor, _ := st.Cursor(ctx, events.CursorName(sink.Name()))
	for cursor < last {
		if _, err := r.Step(ctx, &cursor); err != nil {
			t.Fatal(err)
		}
	}
	got := consume(len(all))
	checkDeliveries(t, all, got)
	t.Logf("%d events, %d relay runs, %d kills, %d deliveries (%d re-sent)", len(all), runs, c.kills, len(got), len(got)-len(all))
	if c.kills == 0 {
		t.Fatal("the relay was never killed: the test proved nothing")
	}
}

// checkDeliveries: every event arrived, and after de-duplication by id each
// key's events (a resource's, per Kafka topic) arrived in change-number
// order.
func checkDeliveries(t *testing.T, want []allot.Event, got []delivery) {
	t.Helper()
	first := map[string]bool{}
	perKey := map[string][]int64{}
	for _, d := range got {
		if first[d.ID] {
			continue
		}
		first[d.ID] = true
		perKey[d.Key] = append(perKey[d.Key], d.ChangeNo)
	}
	var missing []string
	for _, ev := range want {
		if !first[ev.ID] {
			missing = append(missing, fmt.Sprintf("%s(%d)", ev.Type, ev.ChangeNo))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d events never arrived: %v", len(missing), len(want), missing)
	}
	for key, nos := range perKey {
		if !sort.SliceIsSorted(nos, func(i, j int) bool { return nos[i] < nos[j] }) {
			t.Fatalf("resource %q's events arrived out of order: %v", key, nos)
		}
	}
}

func decode(t *testing.T, b []byte) delivery {
	var ev allot.Event
	if err := json.Unmarshal(b, &ev); err != nil {
		t.Fatalf("message is not an event: %v: %s", err, b)
	}
	return delivery{ID: ev.ID, Key: ev.ResourceID, ChangeNo: ev.ChangeNo}
}

func TestKafkaRelayCrashes(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	sink, err := events.NewKafka(cluster.ListenAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	relayUnderCrashes(t, sink, func(want int) []delivery {
		cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...),
			kgo.ConsumeTopics(events.TopicResources, events.TopicHolds, events.TopicOrders),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		var got []delivery
		ids := map[string]bool{}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for len(ids) < want && ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			fs.EachRecord(func(r *kgo.Record) {
				d := decode(t, r.Value)
				if string(r.Key) != d.Key {
					t.Errorf("record key %q, event resource %q", r.Key, d.Key)
				}
				// Kafka orders records within a topic's partition: a
				// resource's order is per topic (event family).
				d.Key = r.Topic + "/" + d.Key
				got = append(got, d)
				ids[d.ID] = true
			})
		}
		// create_booking carries every order.created, keyed the same way.
		return got
	})
}

func natsURL(t testing.TB) string {
	url := os.Getenv("ALLOT_TEST_NATS")
	if url == "" {
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		if os.Getenv("ALLOT_REQUIRE_SERVICES") == "1" {
			t.Fatalf("NATS at %s is required (ALLOT_REQUIRE_SERVICES=1) but unreachable: %v", url, err)
		}
		t.Skipf("NATS at %s unreachable (%v); set ALLOT_TEST_NATS or start nats-server -js", url, err)
	}
	nc.Close()
	return url
}

func TestNATSRelayCrashes(t *testing.T) {
	url := natsURL(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	stream, subject := "ALLOT_TEST_"+id, "allottest"+id
	ctx := context.Background()
	sink, err := events.NewNATS(ctx, events.NATSConfig{URL: url, Stream: stream, Subject: subject})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer js.DeleteStream(context.Background(), stream)
	relayUnderCrashes(t, sink, func(want int) []delivery {
		cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		var got []delivery
		deadline := time.Now().Add(20 * time.Second)
		for len(got) < want && time.Now().Before(deadline) {
			batch, err := cons.Fetch(500, jetstream.FetchMaxWait(time.Second))
			if err != nil {
				t.Fatal(err)
			}
			for m := range batch.Messages() {
				d := decode(t, m.Data())
				if m.Headers().Get(jetstream.MsgIDHeader) != d.ID {
					t.Errorf("Nats-Msg-Id %q for event %s", m.Headers().Get(jetstream.MsgIDHeader), d.ID)
				}
				got = append(got, d)
			}
		}
		if len(got) != want {
			// JetStream de-duplicates re-sends by Nats-Msg-Id: exactly once in the stream.
			t.Errorf("the stream holds %d messages for %d events", len(got), want)
		}
		return got
	})
}
