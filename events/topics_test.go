package events

import (
	"fmt"
	"testing"

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
