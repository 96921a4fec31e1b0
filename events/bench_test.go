package events_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/events"
	"github.com/allot/allot/store/sqlite"
)

// BenchmarkRelay measures how fast a relay moves the outbox to each sink:
// 2,000 order events on 1 resource or spread over 8, in batches of 500,
// every one acknowledged. (NATS keeps one event of a resource in flight at
// a time, so one hot resource is its slowest case.)
func BenchmarkRelay(b *testing.B) {
	for _, resources := range []int{1, 8} {
		b.Run(fmt.Sprintf("resources=%d", resources), func(b *testing.B) { benchRelay(b, resources) })
	}
}

func benchRelay(b *testing.B, resources int) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "a.db"))
	if err != nil {
		b.Fatal(err)
	}
	eng := engine.New(st, engine.Options{Batching: engine.Batching{Workers: 1}})
	defer func() { eng.Close(); st.Close() }()
	c := 1_000_000
	for i := range resources {
		if _, err := eng.CreateResource(ctx, engine.ResourceInput{ID: fmt.Sprintf("r%d", i), Name: "r", Kind: allot.KindStock, Capacity: &c}); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 2000 {
		if _, err := eng.CreateOrder(ctx, engine.OrderInput{Lines: []allot.Line{{ResourceID: fmt.Sprintf("r%d", i%resources), Quantity: 1}}}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := eng.Sequence(ctx, 1_000_000); err != nil {
		b.Fatal(err)
	}
	all, _ := st.EventsAfterChange(ctx, 0, 1_000_000)
	last := all[len(all)-1].ChangeNo

	run := func(b *testing.B, sink events.Sink) {
		r := events.NewRelay(st, sink, nil)
		b.ResetTimer()
		for range b.N {
			var cursor int64
			for cursor < last {
				if _, err := r.Step(ctx, &cursor); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(len(all)*b.N)/b.Elapsed().Seconds(), "events/s")
	}
	b.Run("kfake", func(b *testing.B) {
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
		if err != nil {
			b.Fatal(err)
		}
		defer cluster.Close()
		sink, err := events.NewKafka(cluster.ListenAddrs())
		if err != nil {
			b.Fatal(err)
		}
		defer sink.Close()
		run(b, sink)
	})
	b.Run("nats", func(b *testing.B) {
		url := natsURL(b)
		var rb [4]byte
		_, _ = rand.Read(rb[:])
		id := hex.EncodeToString(rb[:])
		sink, err := events.NewNATS(ctx, events.NATSConfig{URL: url, Stream: "ALLOT_BENCH_" + id, Subject: "allotbench" + id})
		if err != nil {
			b.Skip(fmt.Sprintf("NATS unavailable: %v", err))
		}
		defer sink.Close()
		defer func() {
			if nc, err := nats.Connect(url); err == nil {
				js, _ := jetstream.New(nc)
				js.DeleteStream(context.Background(), "ALLOT_BENCH_"+id)
				nc.Close()
			}
		}()
		run(b, sink)
	})
}
