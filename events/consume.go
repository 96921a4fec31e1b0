package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/allot/allot"
)

// TopicDeadLetters receives the messages a consumer could not act on, with
// the reason in the "dead-letter-reason" header: never dropped, never
// blocking their partition.
const TopicDeadLetters = "allot.dead-letters"

// Poison marks a message no retry can help: it goes to the dead letters.
type Poison struct{ Reason string }

func (p *Poison) Error() string { return "poison message: " + p.Reason }

// Handler acts on one event. A *Poison error dead-letters the message;
// another error is retried (with backoff, attempts times), then
// dead-lettered with that error as the reason.
type Handler func(ctx context.Context, ev allot.Event) error

// KafkaConsumer consumes a topic in a consumer group: several allot
// processes with the same group share its partitions. Offsets are
// committed only for messages handled or dead-lettered: at least once.
type KafkaConsumer struct {
	cl       *kgo.Client
	log      *slog.Logger
	attempts int
	backoff  time.Duration
}

// NewKafkaConsumer joins group on topic.
func NewKafkaConsumer(brokers []string, group, topic string, log *slog.Logger, opts ...kgo.Opt) (*KafkaConsumer, error) {
	if log == nil {
		log = slog.Default()
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.AutoCommitMarks(), kgo.BlockRebalanceOnPoll(), kgo.AllowAutoTopicCreation(),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.WithLogger(KafkaLogger(log)),
	}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer: %w", err)
	}
	return &KafkaConsumer{cl: cl, log: log.With("group", group, "topic", topic), attempts: 5, backoff: 100 * time.Millisecond}, nil
}

// Run consumes until ctx ends, then commits what it handled and leaves the
// group.
func (c *KafkaConsumer) Run(ctx context.Context, h Handler) {
	defer func() {
		done, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.cl.CommitMarkedOffsets(done); err != nil {
			c.log.Error("committing offsets on the way out", "err", err)
		}
		c.cl.Close()
	}()
	for ctx.Err() == nil {
		fs := c.cl.PollRecords(ctx, 500)
		fs.EachError(func(t string, p int32, err error) {
			if ctx.Err() == nil {
				c.log.Error("fetching", "topic", t, "partition", p, "err", err)
			}
		})
		fs.EachRecord(func(r *kgo.Record) {
			if ctx.Err() != nil {
				return // not marked: redelivered to whoever owns it next
			}
			if err := c.handle(ctx, h, r); err != nil {
				return
			}
			c.cl.MarkCommitRecords(r)
		})
		// A rebalance waits until the polled records are handled and
		// marked, so no partition is handed over half-processed.
		c.cl.AllowRebalance()
	}
}

// handle acts on one record, or dead-letters it; it fails only when the
// consumer is stopping or the dead letter could not be written.
func (c *KafkaConsumer) handle(ctx context.Context, h Handler, r *kgo.Record) error {
	var ev allot.Event
	var reason string
	if err := json.Unmarshal(r.Value, &ev); err != nil || ev.ID == "" {
		reason = fmt.Sprintf("not an Allot event: %v", err)
	} else {
		backoff := c.backoff
		for attempt := 1; ; attempt++ {
			err := h(ctx, ev)
			var p *Poison
			if err == nil {
				return nil
			}
			if errors.As(err, &p) {
				reason = p.Reason
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if attempt >= c.attempts {
				reason = fmt.Sprintf("failed %d times: %v", attempt, err)
				break
			}
			sleep(ctx, backoff)
			backoff *= 2
		}
	}
	dl := &kgo.Record{Topic: TopicDeadLetters, Key: r.Key, Value: r.Value, Headers: append(append([]kgo.RecordHeader{}, r.Headers...),
		kgo.RecordHeader{Key: "dead-letter-reason", Value: []byte(reason)},
		kgo.RecordHeader{Key: "dead-letter-source", Value: []byte(fmt.Sprintf("%s/%d/%d", r.Topic, r.Partition, r.Offset))})}
	// Until the dead letter is written the message stays where it is:
	// marking a later one would commit past it.
	for backoff := c.backoff; ; backoff = min(2*backoff, 10*time.Second) {
		err := c.cl.ProduceSync(ctx, dl).FirstErr()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.Error("writing a dead letter; retrying", "err", err, "reason", reason)
		sleep(ctx, backoff)
	}
	c.log.Warn("dead-lettered a message", "reason", reason, "source", fmt.Sprintf("%s/%d/%d", r.Topic, r.Partition, r.Offset))
	return nil
}

// Transitioner moves orders through their states (the engine does).
type Transitioner interface {
	Transition(ctx context.Context, id string, to allot.OrderStatus, cause string) (allot.Order, error)
}

// ConfirmBookings is seed 000's seller proxy on the create_booking topic:
// each order.created is the seller's booking made, so the order becomes
// confirmed (BookingMade). A repeat changes nothing; an order no longer
// reserved (cancelled since) is left as it is; a message without an order,
// or about an order that does not exist, is poison.
func ConfirmBookings(t Transitioner, log *slog.Logger) Handler {
	if log == nil {
		log = slog.Default()
	}
	return func(ctx context.Context, ev allot.Event) error {
		if ev.Type != allot.EventOrderCreated {
			return &Poison{Reason: fmt.Sprintf("create_booking carries order.created events, not %q", ev.Type)}
		}
		if ev.OrderID == "" {
			return &Poison{Reason: "the event names no order"}
		}
		_, err := t.Transition(ctx, ev.OrderID, allot.OrderConfirmed, "booking made by the seller proxy (create_booking)")
		switch allot.CodeOf(err) {
		case "", allot.CodeOutcomeUnknown:
			// nil, or a failure worth retrying: the transition is safe to
			// repeat, whether or not the last try took effect.
			return err
		case allot.CodeNotFound:
			return &Poison{Reason: fmt.Sprintf("order %s does not exist", ev.OrderID)}
		case allot.CodeInvalidTransition:
			log.InfoContext(ctx, "create_booking for an order that moved on", "order", ev.OrderID, "err", err)
			return nil
		}
		return &Poison{Reason: err.Error()}
	}
}
