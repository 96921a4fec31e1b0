package events

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/allot/allot"
)

func TestTopics(t *testing.T) {
	status := func(to allot.OrderStatus) []byte {
		return []byte(fmt.Sprintf(`{"order":{"id":"o"},"transition":{"from":"reserved","to":%q}}`, to))
	}
	cases := []struct {
		typ     string
		payload []byte
		want    []string
	}{
		{allot.EventResourceCreated, nil, []string{TopicResources}},
		{allot.EventCapacityChanged, nil, []string{TopicResources}},
		{allot.EventAvailabilityLow, nil, []string{TopicResources}},
		{allot.EventHoldCreated, nil, []string{TopicHolds}},
		{allot.EventHoldExpired, nil, []string{TopicHolds}},
		{allot.EventOrderCreated, nil, []string{TopicOrders, TopicCreateBooking, TopicPurchases}},
		{allot.EventOrderStatus, status(allot.OrderCancelled), []string{TopicOrders}},
		{allot.EventOrderStatus, status(allot.OrderConfirmed), []string{TopicOrders}},
		{allot.EventOrderStatus, status(allot.OrderPaymentFailed), []string{TopicOrders, TopicErrors}},
		{allot.EventOrderStatus, status(allot.OrderRejected), []string{TopicOrders, TopicErrors}},
		{allot.EventOrderStatus, status(allot.OrderExpired), []string{TopicOrders, TopicErrors}},
	}
	for _, c := range cases {
		got := Topics(allot.Event{Type: c.typ, Payload: c.payload})
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s %s: topics %v, want %v", c.typ, c.payload, got, c.want)
		}
	}
}

// With no broker to take them, records fail after a bounded wait (and the
// relay logs and retries) instead of blocking Publish without a word.
func TestKafkaPublishWithoutBrokerFails(t *testing.T) {
	k, err := NewKafka([]string{"127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if got := k.cl.OptValue(kgo.RecordDeliveryTimeout); got != PublishTimeout {
		t.Fatalf("record delivery timeout %v, want %v", got, PublishTimeout)
	}
	var logged syncBuffer
	short, err := NewKafka([]string{"127.0.0.1:1"}, kgo.RecordDeliveryTimeout(time.Second),
		kgo.WithLogger(KafkaLogger(slog.New(slog.NewTextHandler(&logged, nil)))))
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = short.Publish(ctx, []allot.Event{{ID: "evt_1", Type: allot.EventHoldCreated, ResourceID: "r", Payload: []byte(`{}`)}})
	if err == nil || ctx.Err() != nil {
		t.Fatalf("publish with no broker: %v (context: %v), want a delivery failure before the context ends", err, ctx.Err())
	}
	if out := logged.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "127.0.0.1:1") {
		t.Fatalf("the unreachable broker was not logged as a warning: %q", out)
	}
}

// syncBuffer is a bytes.Buffer that franz-go's goroutines may log to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
