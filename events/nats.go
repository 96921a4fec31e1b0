package events

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/allot/allot"
)

// NATS publishes events to a JetStream stream, one subject per event type
// (<prefix>.order.created, ...). The event id is the Nats-Msg-Id, so
// JetStream drops a re-sent event within its duplicate window.
type NATS struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	prefix string
	name   string
}

// NATSConfig configures the NATS sink.
type NATSConfig struct {
	URL     string
	Stream  string // created or updated to take <Subject>.>
	Subject string // subject prefix, e.g. "allot.events"
}

// NewNATS connects and makes sure the stream exists.
func NewNATS(ctx context.Context, c NATSConfig) (*NATS, error) {
	nc, err := nats.Connect(c.URL, nats.Name("allot relay"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("nats: connecting to %s: %w", c.URL, err)
	}
	// A reply that never comes fails the publish instead of hanging it.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		nc.Close()
		return nil, err
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: c.Stream, Subjects: []string{c.Subject + ".>"}, Duplicates: 10 * time.Minute, Storage: jetstream.FileStorage,
	}); err != nil {
		nc.Close()
		return nil, fmt.Errorf("nats: stream %s: %w", c.Stream, err)
	}
	return &NATS{nc: nc, js: js, prefix: c.Subject, name: "nats:" + c.Stream}, nil
}

func (n *NATS) Name() string { return n.name }

// Publish sends evs and waits for every acknowledgement. Events of
// different resources are in flight together; a resource's next event is
// sent only once its previous one is acknowledged, and the library's own
// retries are off (they run concurrently and could reorder): if one fails,
// none after it for that resource is sent, and the relay sends the batch
// again in order (JetStream drops the repeats by Nats-Msg-Id).
func (n *NATS) Publish(ctx context.Context, evs []allot.Event) error {
	inFlight := map[string]jetstream.PubAckFuture{} // resource -> its unacknowledged event
	wait := func(f jetstream.PubAckFuture) error {
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return fmt.Errorf("nats: %s not acknowledged: %w", f.Msg().Header.Get(jetstream.MsgIDHeader), err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, ev := range evs {
		if f, ok := inFlight[ev.ResourceID]; ok {
			if err := wait(f); err != nil {
				return err
			}
		}
		msg := &nats.Msg{Subject: n.prefix + "." + ev.Type, Data: Message(ev), Header: nats.Header{}}
		msg.Header.Set("Allot-Resource", ev.ResourceID)
		f, err := n.js.PublishMsgAsync(msg, jetstream.WithMsgID(ev.ID), jetstream.WithRetryAttempts(0))
		if err != nil {
			return fmt.Errorf("nats: publishing %s: %w", ev.ID, err)
		}
		inFlight[ev.ResourceID] = f
	}
	for _, f := range inFlight {
		if err := wait(f); err != nil {
			return err
		}
	}
	return nil
}

func (n *NATS) Close() error { n.nc.Close(); return nil }
