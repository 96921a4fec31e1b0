package engine

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/allot/allot"
)

// Scheduler makes workflow steps durable: Schedule enqueues them inside tx,
// so that a step exists exactly when the change that calls for it commits.
type Scheduler interface {
	Schedule(ctx context.Context, tx allot.Tx, steps []allot.Step) error
}

// Workflow turns the booking workflow on. Without it (the zero value) orders
// are reserved at once and nothing follows; with it every order is carried
// through payment, the seller and the notification.
type Workflow struct {
	Scheduler Scheduler
	// DefaultProvider pays priced orders that name no provider.
	DefaultProvider string
	// Providers reports whether a payment provider is configured.
	Providers func(name string) bool
	// PaymentTimeout expires an order still awaiting payment after it;
	// SellerTimeout rejects (and refunds) a paid order the seller has not
	// answered after it. Each is a step scheduled with the change that
	// starts the wait, so only orders the workflow started wait.
	PaymentTimeout, SellerTimeout time.Duration
}

// Defaults for the workflow's timeouts.
const (
	DefaultPaymentTimeout = 15 * time.Minute
	DefaultSellerTimeout  = 24 * time.Hour
)

// WorkflowOn reports whether orders run the workflow.
func (e *Engine) WorkflowOn() bool { return e.wf.Scheduler != nil }

func (w *wtx) schedule(ss ...allot.Step) { w.steps = append(w.steps, ss...) }

// followUps are the steps a status change calls for: the workflow's rules.
// A change away from a state in which the customer may have paid schedules
// a refund; the refund is keyed by the charge, so when nothing was
// captured it is a no-op at the provider.
func (e *Engine) followUps(o allot.Order, from, to allot.OrderStatus, cause string) []allot.Step {
	if !e.WorkflowOn() {
		return nil
	}
	step := func(k allot.StepKind) allot.Step { return allot.Step{Kind: k, OrderID: o.ID, Cause: cause} }
	later := func(k allot.StepKind, d time.Duration, why string) allot.Step {
		return allot.Step{Kind: k, OrderID: o.ID, Cause: fmt.Sprintf(why, d), After: d}
	}
	switch {
	case from == "" && to == allot.OrderAwaitingPayment:
		return []allot.Step{step(allot.StepCharge),
			later(allot.StepPaymentTimeout, e.wf.PaymentTimeout, "no payment within %s")}
	case (from == "" || from == allot.OrderAwaitingPayment) && to == allot.OrderReserved:
		return []allot.Step{step(allot.StepSeller),
			later(allot.StepSellerTimeout, e.wf.SellerTimeout, "the seller did not answer within %s")}
	case to == allot.OrderConfirmed && o.CustomerID != "":
		return []allot.Step{step(allot.StepNotify)}
	case from.Live() && (to == allot.OrderCancelled || to == allot.OrderExpired || to == allot.OrderRejected) && o.Payment != nil:
		return []allot.Step{step(allot.StepRefund)}
	}
	return nil
}

// ScheduleSteps enqueues steps in a transaction of their own: for a step
// that no status change calls for (a charge that landed after its order was
// cancelled needs a refund).
func (e *Engine) ScheduleSteps(ctx context.Context, steps ...allot.Step) error {
	if !e.WorkflowOn() {
		return errors.New("engine: the workflow is off")
	}
	return e.store.Write(ctx, func(tx allot.Tx) error { return e.wf.Scheduler.Schedule(ctx, tx, steps) })
}

// CodeUnknownCustomer-style checks run before anything is held.
func (e *Engine) checkOrderCustomer(ctx context.Context, id string) error {
	if err := checkCustomer(id); err != nil {
		return err
	}
	if id == "" || !e.WorkflowOn() {
		return nil
	}
	_, err := e.store.GetCustomer(ctx, id)
	if errors.Is(err, allot.ErrNotFound) {
		return &allot.Error{Code: allot.CodeUnknownCustomer, Field: "customer_id", Line: -1,
			Detail: fmt.Sprintf("customer %q is not known; create it with POST /v1/customers first", id)}
	}
	return err
}

var orderID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$`)

// channel applies a channel's own id and its prepayment to a new order.
func (e *Engine) channel(o *allot.Order, in OrderInput) error {
	if in.ID != "" {
		if !orderID.MatchString(in.ID) {
			return allot.Invalid("id", "an order id must be 1-200 letters, digits, '.', '_', ':' or '-'")
		}
		o.ID = in.ID
	}
	if in.Prepaid && in.Payment != nil {
		return allot.Invalid("payment", "a prepaid order takes no payment details")
	}
	return nil
}

// payment decides how a priced order is paid, and refuses payment details
// where nothing is due.
func (e *Engine) payment(o *allot.Order, p *allot.OrderPayment, prepaid bool) error {
	priced := o.Total != nil && o.Total.Minor > 0
	switch {
	case prepaid:
		o.Status, o.History[0].To = allot.OrderReserved, allot.OrderReserved
		o.History[0].Cause += " (paid to the booking channel)"
		return nil
	case !e.WorkflowOn() && p != nil:
		return allot.Invalid("payment", "payments are not configured on this server")
	case !e.WorkflowOn():
		return nil
	case !priced && p != nil:
		return allot.Invalid("payment", "the order is free; leave payment out")
	case !priced:
		o.Status, o.History[0].To = allot.OrderReserved, allot.OrderReserved
		return nil
	}
	if p == nil {
		p = &allot.OrderPayment{Provider: e.wf.DefaultProvider}
	}
	if p.Provider == "" {
		p.Provider = e.wf.DefaultProvider
	}
	if e.wf.Providers != nil && !e.wf.Providers(p.Provider) {
		return allot.Invalid("payment.provider", "payment provider %q is not configured", p.Provider)
	}
	if p.Simulate != "" && !fakeModes[p.Simulate] {
		return allot.Invalid("payment.simulate", "simulate must be one of succeed, decline, fail_once, timeout, pending, refund_pending")
	}
	o.Payment = p
	o.Status, o.History[0].To = allot.OrderAwaitingPayment, allot.OrderAwaitingPayment
	return nil
}

// fakeModes are what the fake provider can simulate; other providers
// ignore the field.
var fakeModes = map[string]bool{"succeed": true, "decline": true, "fail_once": true, "timeout": true, "pending": true, "refund_pending": true}

var customerID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$`)

// CreateCustomer registers a customer.
func (e *Engine) CreateCustomer(ctx context.Context, c allot.Customer) (allot.Customer, error) {
	if c.ID == "" {
		c.ID = NewID("cus")
	}
	if !customerID.MatchString(c.ID) {
		return c, allot.Invalid("id", "id must be 1-200 letters, digits, '.', '_', ':' or '-', starting with a letter or digit")
	}
	if utf8.RuneCountInString(c.Name) > 200 {
		return c, allot.Invalid("name", "name may be at most 200 characters")
	}
	a, err := mail.ParseAddress(c.Email)
	if err != nil || a.Name != "" || a.Address != c.Email || len(c.Email) > 254 {
		return c, allot.Invalid("email", "email must be a bare address such as ada@example.com")
	}
	c.CreatedAt = e.now()
	v, err := e.do(ctx, &op{shard: c.ID, apply: func(ctx context.Context, w *wtx) (any, error) {
		err := w.InsertCustomer(ctx, c)
		if errors.Is(err, allot.ErrConflict) {
			return nil, &allot.Error{Code: allot.CodeAlreadyExists, Field: "id", Line: -1, Detail: fmt.Sprintf("customer %q already exists", c.ID)}
		}
		return c, err
	}})
	if err != nil {
		return allot.Customer{}, err
	}
	return v.(allot.Customer), nil
}

// GetCustomer returns a customer.
func (e *Engine) GetCustomer(ctx context.Context, id string) (allot.Customer, error) {
	c, err := e.store.GetCustomer(ctx, id)
	if errors.Is(err, allot.ErrNotFound) {
		return c, allot.Errorf(allot.CodeNotFound, "customer %q does not exist", id)
	}
	return c, err
}

// RecordPayment appends a payment event (allot.EventPaymentRefunded) for an
// order to the outbox: a refund changes no status, but subscribers and
// auditors need to see it.
func (e *Engine) RecordPayment(ctx context.Context, o allot.Order, typ string, payload any) error {
	_, err := e.do(ctx, &op{shard: o.ID, apply: func(ctx context.Context, w *wtx) (any, error) {
		w.emit(e.event(typ, firstResource(lineList(o.Lines)), o.ID, o.HoldID, payload))
		return nil, nil
	}})
	return err
}
