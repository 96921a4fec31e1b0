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
	js, err := jetstream.New(nc)
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

// Publish sends all of evs asynchronously, in order on one connection, and
// waits for every acknowledgement.
func (n *NATS) Publish(ctx context.Context, evs []allot.Event) error {
	futures := make([]jetstream.PubAckFuture, 0, len(evs))
	for _, ev := range evs {
		msg := &nats.Msg{Subject: n.prefix + "." + ev.Type, Data: Message(ev), Header: nats.Header{}}
		msg.Header.Set("Allot-Resource", ev.ResourceID)
		f, err := n.js.PublishMsgAsync(msg, jetstream.WithMsgID(ev.ID))
		if err != nil {
			return fmt.Errorf("nats: publishing %s: %w", ev.ID, err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("nats: %s not acknowledged: %w", f.Msg().Header.Get(jetstream.MsgIDHeader), err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (n *NATS) Close() error { n.nc.Close(); return nil }
