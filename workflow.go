package allot

import (
	"context"
	"errors"
	"time"
)

// The booking workflow carries an order from awaiting_payment through
// reserved (paid), confirmed (the seller made the booking) to notified (the
// customer was told), or to one of the failure ends. Each step is a durable
// job scheduled in the same transaction as the status change that calls for
// it; the step's external effect goes through one of the interfaces below,
// keyed so that a retried step never has its effect twice.

// StepKind names a workflow step.
type StepKind string

const (
	StepCharge StepKind = "payment_charge"
	StepRefund StepKind = "payment_refund"
	StepSeller StepKind = "seller_confirm"
	StepNotify StepKind = "notify"
	// The timeouts: steps scheduled for later that end the order if it is
	// still waiting then (payment: expired; seller: rejected and refunded).
	StepPaymentTimeout StepKind = "payment_timeout"
	StepSellerTimeout  StepKind = "seller_timeout"
)

// Step is one unit of workflow work on an order.
type Step struct {
	Kind    StepKind `json:"kind"`
	OrderID string   `json:"order_id"`
	// Cause is why the step was scheduled (the transition that called for it).
	Cause string `json:"cause,omitempty"`
	// After delays the step (the timeouts).
	After time.Duration `json:"-"`
}

// Customer is someone who books; the notifier writes to Email.
type Customer struct {
	ID        string    `json:"id"`
	Name      string    `json:"name,omitempty"`
	Email     string    `json:"email"`
	CreatedAt time.Time `json:"created_at"`
}

// PaymentStatus is a provider's answer to a charge or a refund.
type PaymentStatus string

const (
	PaymentSucceeded PaymentStatus = "succeeded"
	PaymentDeclined  PaymentStatus = "declined"
	// PaymentPending: the provider answers later, at the callback.
	PaymentPending PaymentStatus = "pending"
	// PaymentNothingToRefund: a refund found no capture under its charge key.
	PaymentNothingToRefund PaymentStatus = "nothing_to_refund"
)

// PaymentRequest asks a provider to charge or refund an order's total.
type PaymentRequest struct {
	// Key makes the effect idempotent at the provider: the same key never
	// charges (or refunds) twice. A refund names the charge's key in ChargeKey.
	Key       string `json:"key"`
	ChargeKey string `json:"charge_key,omitempty"`
	OrderID   string `json:"order_id"`
	Amount    Money  `json:"amount"`
	Customer  string `json:"customer_id,omitempty"`
	// Simulate drives the fake provider: "decline", "timeout", "fail_once",
	// "pending", "refund_pending"; real providers ignore it.
	Simulate string `json:"simulate,omitempty"`
}

// PaymentResult is a provider's answer.
type PaymentResult struct {
	Status    PaymentStatus `json:"status"`
	PaymentID string        `json:"payment_id,omitempty"`
	Reason    string        `json:"reason,omitempty"`
}

// Payments charges and refunds. An error is transient: the step is retried
// with the same key.
type Payments interface {
	Charge(ctx context.Context, r PaymentRequest) (PaymentResult, error)
	Refund(ctx context.Context, r PaymentRequest) (PaymentResult, error)
}

// SellerDecision is a seller's answer to a booking request.
type SellerDecision string

const (
	SellerAccepted SellerDecision = "accepted"
	SellerRejected SellerDecision = "rejected"
	// SellerPending: the seller answers later, at the seller-decision endpoint.
	SellerPending SellerDecision = "pending"
)

// SellerRequest asks the seller (seed 000: the seller proxy) to make the
// booking of a paid order.
type SellerRequest struct {
	Key   string `json:"key"`
	Order Order  `json:"order"`
}

// SellerAnswer is a seller's decision with its reason.
type SellerAnswer struct {
	Decision  SellerDecision `json:"decision"`
	Reason    string         `json:"reason,omitempty"`
	Reference string         `json:"reference,omitempty"`
}

// Sellers asks sellers to make bookings. An error is transient.
type Sellers interface {
	Confirm(ctx context.Context, r SellerRequest) (SellerAnswer, error)
}

// Notification is one message to a customer. Key is stable per order and
// step (it is the message's Message-ID), so a resend after a crash is the
// same message, which receivers de-duplicate.
type Notification struct {
	Key     string `json:"key"`
	OrderID string `json:"order_id"`
	To      string `json:"to"`
	Subject string `json:"subject"`
	Body    string `json:"body"`
}

// Notifier delivers notifications. An error is transient.
type Notifier interface {
	Notify(ctx context.Context, n Notification) error
}

// ErrPermanent marks a step failure that retrying cannot fix (a provider
// refusing the request as malformed): the step is dead-lettered at once.
var ErrPermanent = errors.New("permanent failure")
