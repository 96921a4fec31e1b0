// Package allot holds Allot's domain: resources with capacity, the buckets
// that account for it, holds and orders that claim it, the events every change
// appends, and the Store interface the database packages implement.
//
// The engine (package engine) owns the rules; stores only keep data and lock
// rows. Nothing here knows HTTP or SQL.
package allot

import (
	"encoding/json"
	"time"
)

// Kind is the shape of a resource's capacity.
type Kind string

const (
	// KindNightly is a hotel room type or one room: one bucket per night.
	KindNightly Kind = "nightly"
	// KindSlot is a set of sessions or time slots, each its own bucket.
	KindSlot Kind = "slot"
	// KindStock is one pool of units.
	KindStock Kind = "stock"
)

// StockKey is the key of the single bucket of a stock resource.
const StockKey = "stock"

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k == KindNightly || k == KindSlot || k == KindStock }

// Resource is something with capacity, owned by a seller. Its kind, default
// capacity and price never change after creation; capacity per bucket does.
type Resource struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Kind     Kind   `json:"kind"`
	Capacity int    `json:"capacity"`
	Slots    []Slot `json:"slots,omitempty"`
	Price    *Money `json:"price,omitempty"`
	// Threshold, when set, makes a bucket whose availability falls to or
	// below it (or climbs back above) emit availability.low (restored).
	Threshold *int      `json:"threshold,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Slot is one session or time slot of a slot resource.
type Slot struct {
	ID       string    `json:"id"`
	StartsAt time.Time `json:"starts_at"`
	Capacity int       `json:"capacity"`
}

// BucketKey names one bucket: a resource and a night (YYYY-MM-DD), a slot id,
// or StockKey. Buckets are always locked in BucketKey order.
type BucketKey struct {
	ResourceID string
	Key        string
}

// Less orders bucket keys: the one global lock order that prevents deadlocks.
func (a BucketKey) Less(b BucketKey) bool {
	if a.ResourceID != b.ResourceID {
		return a.ResourceID < b.ResourceID
	}
	return a.Key < b.Key
}

// Bucket is the unit of capacity accounting. Invariant, at every moment
// another transaction can see: Held+Booked <= Capacity.
type Bucket struct {
	BucketKey
	Capacity int
	Held     int
	Booked   int
}

// Available is what a new claim may take.
func (b Bucket) Available() int { return max(0, b.Capacity-b.Held-b.Booked) }

// ClaimKind says whether a claim is held (by a hold) or booked (by an order).
type ClaimKind string

const (
	ClaimHeld   ClaimKind = "held"
	ClaimBooked ClaimKind = "booked"
)

// Claim is one owner's live quantity on one bucket. Claims exist only while
// they count: Bucket.Held is the sum of held claims on it, Bucket.Booked the
// sum of booked ones. Released capacity deletes the claim.
type Claim struct {
	BucketKey
	OwnerID  string
	Kind     ClaimKind
	Quantity int
}

// Line is one requested piece of capacity. Which fields apply depends on the
// resource's kind: CheckIn/CheckOut for nightly, Slot for slot, neither for stock.
type Line struct {
	ResourceID string `json:"resource_id"`
	Quantity   int    `json:"quantity"`
	CheckIn    *Date  `json:"check_in,omitempty"`
	CheckOut   *Date  `json:"check_out,omitempty"`
	Slot       string `json:"slot,omitempty"`
}

// HoldStatus is the state of a hold.
type HoldStatus string

const (
	HoldActive    HoldStatus = "active"
	HoldReleased  HoldStatus = "released"
	HoldExpired   HoldStatus = "expired"
	HoldConverted HoldStatus = "converted"
)

// Hold is a claim on buckets that expires (OpenActive: a lease).
type Hold struct {
	ID         string     `json:"id"`
	Status     HoldStatus `json:"status"`
	CustomerID string     `json:"customer_id,omitempty"`
	ExpiresAt  time.Time  `json:"expires_at"`
	CreatedAt  time.Time  `json:"created_at"`
	OrderID    string     `json:"order_id,omitempty"`
	Lines      []Line     `json:"lines"`
}

// OrderStatus is the state of an order. The workflow states are defined here
// so that the status machine is one table; the foundation uses reserved and
// cancelled, the workflow drives the rest.
type OrderStatus string

const (
	OrderAwaitingPayment OrderStatus = "awaiting_payment"
	OrderReserved        OrderStatus = "reserved"  // seed 000: Initial
	OrderConfirmed       OrderStatus = "confirmed" // seed 000: BookingMade
	OrderNotified        OrderStatus = "notified"  // seed 000: EmailSent
	OrderPaymentFailed   OrderStatus = "payment_failed"
	OrderRejected        OrderStatus = "rejected"
	OrderCancelled       OrderStatus = "cancelled"
	OrderExpired         OrderStatus = "expired"
)

// Live reports whether an order in this status keeps its capacity booked.
func (s OrderStatus) Live() bool {
	switch s {
	case OrderAwaitingPayment, OrderReserved, OrderConfirmed, OrderNotified:
		return true
	}
	return false
}

// Valid reports whether s is a known status.
func (s OrderStatus) Valid() bool {
	return s.Live() || s == OrderPaymentFailed || s == OrderRejected || s == OrderCancelled || s == OrderExpired
}

// transitions is the order status machine: from -> allowed targets.
var transitions = map[OrderStatus][]OrderStatus{
	"":                   {OrderAwaitingPayment, OrderReserved},
	OrderAwaitingPayment: {OrderReserved, OrderPaymentFailed, OrderCancelled, OrderExpired},
	OrderReserved:        {OrderConfirmed, OrderRejected, OrderCancelled},
	OrderConfirmed:       {OrderNotified, OrderCancelled},
	OrderNotified:        {OrderCancelled},
}

// CanTransition reports whether the status machine allows from -> to.
func CanTransition(from, to OrderStatus) bool {
	for _, t := range transitions[from] {
		if t == to {
			return true
		}
	}
	return false
}

// OrderLine is a booked line with its price.
type OrderLine struct {
	Line
	UnitPrice *Money `json:"unit_price,omitempty"`
	Amount    *Money `json:"amount,omitempty"`
}

// Transition is one recorded change of an order's status, with its cause.
type Transition struct {
	From  OrderStatus `json:"from,omitempty"`
	To    OrderStatus `json:"to"`
	Cause string      `json:"cause"`
	At    time.Time   `json:"at"`
}

// Order is a booking (seed 000: reservation; seed 001: purchase).
type Order struct {
	ID         string      `json:"id"`
	Status     OrderStatus `json:"status"`
	CustomerID string      `json:"customer_id,omitempty"`
	HoldID     string      `json:"hold_id,omitempty"`
	Lines      []OrderLine `json:"lines"`
	Total      *Money      `json:"total"`
	// Payment says how the order is paid: which provider, and for the fake
	// provider how it should behave. Nil for free orders.
	Payment   *OrderPayment `json:"payment,omitempty"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
	History   []Transition  `json:"history"`
}

// OrderPayment is an order's choice of payment provider.
type OrderPayment struct {
	Provider string `json:"provider"`
	Simulate string `json:"simulate,omitempty"`
}

// Event is one entry of the transactional outbox, appended in the same
// transaction as the change it describes. Seq is the log position the store
// assigns.
type Event struct {
	Seq        int64           `json:"seq"`
	ChangeNo   int64           `json:"change_no,omitempty"`
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	ResourceID string          `json:"resource_id,omitempty"`
	OrderID    string          `json:"order_id,omitempty"`
	HoldID     string          `json:"hold_id,omitempty"`
	At         time.Time       `json:"at"`
	Payload    json.RawMessage `json:"payload"`
}

// Event types appended by the engine.
const (
	EventResourceCreated = "resource.created"
	EventCapacityChanged = "capacity.changed"
	EventHoldCreated     = "hold.created"
	EventHoldReleased    = "hold.released"
	EventHoldExpired     = "hold.expired"
	EventOrderCreated    = "order.created"
	EventOrderStatus     = "order.status_changed"
	EventAvailabilityLow = "availability.low"
	EventAvailabilityUp  = "availability.restored"
	// EventPaymentRefunded: the workflow gave an order's payment back.
	EventPaymentRefunded = "payment.refunded"
	// EventResourceRetired: a resource's opportunities leave the
	// opportunity feeds (OpenActive: deleted items).
	EventResourceRetired = "resource.retired"
)
