package events

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/allot/allot"
)

// Kafka topics, one per event family, and the seeds' topics.
const (
	TopicResources     = "allot.resources"
	TopicHolds         = "allot.holds"
	TopicOrders        = "allot.orders"
	TopicCreateBooking = "create_booking"    // seed 000: the seller proxy books what is created
	TopicPurchases     = "purchase_finished" // seed 001: the result of a purchase
	TopicErrors        = "allot.errors"      // seed 002: orders that ended in a failure
)

// Topics says where an event goes.
func Topics(ev allot.Event) []string {
	switch ev.Type {
	case allot.EventResourceCreated, allot.EventCapacityChanged, allot.EventAvailabilityLow, allot.EventAvailabilityUp, allot.EventResourceRetired:
		return []string{TopicResources}
	case allot.EventHoldCreated, allot.EventHoldReleased, allot.EventHoldExpired:
		return []string{TopicHolds}
	case allot.EventOrderCreated:
		return []string{TopicOrders, TopicCreateBooking, TopicPurchases}
	case allot.EventOrderStatus:
		if to := statusOf(ev); to == allot.OrderPaymentFailed || to == allot.OrderRejected || to == allot.OrderExpired {
			return []string{TopicOrders, TopicErrors}
		}
		return []string{TopicOrders}
	}
	return []string{TopicOrders}
}

func statusOf(ev allot.Event) allot.OrderStatus {
	var p struct {
		Transition allot.Transition `json:"transition"`
	}
	if err := json.Unmarshal(ev.Payload, &p); err != nil {
		return ""
	}
	return p.Transition.To
}

// Kafka publishes events with franz-go's idempotent producer (its default),
// keyed by resource id so that one resource's events stay in one
// partition, in order.
type Kafka struct {
	cl   *kgo.Client
	name string
}

// PublishTimeout bounds how long a record waits to be delivered. franz-go
// waits without end by default: with no broker up, the relay sat in one
// Publish and said nothing. Now the batch fails, the relay logs it and
// tries again (nothing is skipped: it resends from its cursor).
const PublishTimeout = 30 * time.Second

// NewKafka connects to the seed brokers.
func NewKafka(brokers []string, opts ...kgo.Opt) (*Kafka, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.RequiredAcks(kgo.AllISRAcks()), kgo.AllowAutoTopicCreation(),
		kgo.RecordDeliveryTimeout(PublishTimeout)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	return &Kafka{cl: cl, name: "kafka"}, nil
}

func (k *Kafka) Name() string { return k.name }

// KafkaLogger passes franz-go's warnings and errors (a broker it cannot
// reach, say) to log, so that a Kafka that is down is said at once, not
// only when a batch times out.
func KafkaLogger(log *slog.Logger) kgo.Logger { return kafkaLogger{log.With("component", "kafka")} }

type kafkaLogger struct{ log *slog.Logger }

func (l kafkaLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (l kafkaLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lv := slog.LevelWarn
	if level == kgo.LogLevelError {
		lv = slog.LevelError
	}
	l.log.Log(context.Background(), lv, msg, keyvals...)
}

// Publish produces evs in order and waits for every acknowledgement.
func (k *Kafka) Publish(ctx context.Context, evs []allot.Event) error {
	var recs []*kgo.Record
	for _, ev := range evs {
		v := Message(ev)
		for _, t := range Topics(ev) {
			recs = append(recs, &kgo.Record{Topic: t, Key: []byte(ev.ResourceID), Value: v,
				Headers: []kgo.RecordHeader{{Key: "event-id", Value: []byte(ev.ID)}, {Key: "event-type", Value: []byte(ev.Type)}}})
		}
	}
	if err := k.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	return nil
}

func (k *Kafka) Close() error { k.cl.Close(); return nil }
