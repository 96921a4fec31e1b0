package workflow

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/riverqueue/river"

	"github.com/allot/allot"
)

// stepArgs are a step's job arguments: the order it works on, and why.
type stepArgs struct {
	OrderID string `json:"order_id"`
	Cause   string `json:"cause,omitempty"`
}

type (
	chargeArgs stepArgs
	refundArgs stepArgs
	sellerArgs stepArgs
	notifyArgs stepArgs
	sweepArgs  struct{}

	paymentTimeoutArgs stepArgs
	sellerTimeoutArgs  stepArgs
)

func (paymentTimeoutArgs) Kind() string { return string(allot.StepPaymentTimeout) }
func (sellerTimeoutArgs) Kind() string  { return string(allot.StepSellerTimeout) }

func (chargeArgs) Kind() string { return string(allot.StepCharge) }
func (refundArgs) Kind() string { return string(allot.StepRefund) }
func (sellerArgs) Kind() string { return string(allot.StepSeller) }
func (notifyArgs) Kind() string { return string(allot.StepNotify) }
func (sweepArgs) Kind() string  { return "sweep" }

// InsertOpts: a sweep that fails is retried by the next one, not by itself.
func (sweepArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{MaxAttempts: 1} }

// Keys of the steps' external effects: stable per order, so a retried step
// asks for the same effect, which the provider, seller or mail receiver
// applies once.
func chargeKey(orderID string) string { return "charge-" + orderID }
func refundKey(orderID string) string { return "refund-" + orderID }
func sellerKey(orderID string) string { return "seller-" + orderID }
func notifyKey(orderID string) string { return "confirmed-" + orderID }

// order reads the order a step works on; a missing one ends the step (it
// cannot appear later).
func (r *Runner) order(ctx context.Context, id string) (allot.Order, error) {
	o, err := r.eng.GetOrder(ctx, id)
	if allot.CodeOf(err) == allot.CodeNotFound {
		return o, permanent(err)
	}
	return o, err
}

// effectErr turns a provider's error into the step's: permanent ones end
// it at once, others are retried.
func effectErr(what string, err error) error {
	err = fmt.Errorf("%s: %w", what, err)
	if isPermanent(err) {
		return permanent(err)
	}
	return err
}

type chargeWorker struct {
	river.WorkerDefaults[chargeArgs]
	r *Runner
}

func (w *chargeWorker) Work(ctx context.Context, job *river.Job[chargeArgs]) error {
	r := w.r
	o, err := r.order(ctx, job.Args.OrderID)
	if err != nil {
		return err
	}
	// Only an order still awaiting payment is charged. One that ended
	// meanwhile had a refund scheduled when it ended; but if an earlier try
	// of this step may have captured (its answer lost to a timeout or a
	// crash) after that refund found nothing, only this step knows: it asks
	// for the refund again (keyed, so at most one refund happens).
	if o.Status != allot.OrderAwaitingPayment {
		if job.Attempt > 1 && !o.Status.Live() && o.Payment != nil {
			return r.eng.ScheduleSteps(ctx, allot.Step{Kind: allot.StepRefund, OrderID: o.ID,
				Cause: fmt.Sprintf("an earlier charge attempt may have captured after the order was %s", o.Status)})
		}
		return nil
	}
	if o.Payment == nil || o.Total == nil {
		return permanent(fmt.Errorf("order %s has nothing to charge", o.ID))
	}
	p, ok := r.cfg.Payments[o.Payment.Provider]
	if !ok {
		return permanent(fmt.Errorf("payment provider %q is not configured", o.Payment.Provider))
	}
	res, err := p.Charge(ctx, allot.PaymentRequest{Key: chargeKey(o.ID), OrderID: o.ID, Amount: *o.Total,
		Customer: o.CustomerID, Simulate: o.Payment.Simulate})
	if isPermanent(err) {
		// The provider refuses the request itself: no retry can pay it.
		_, terr := r.eng.TransitionFrom(ctx, o.ID, allot.OrderAwaitingPayment, allot.OrderPaymentFailed,
			fmt.Sprintf("the payment provider %s refused the charge: %s", o.Payment.Provider, trim(err.Error(), 200)))
		if allot.CodeOf(terr) == allot.CodeInvalidTransition {
			return nil
		}
		return terr
	}
	if err != nil {
		return fmt.Errorf("charging at %s: %w", o.Payment.Provider, err)
	}
	_, err = r.ChargeResult(ctx, o.ID, o.Payment.Provider, res)
	return err
}

// ChargeResult applies a provider's answer to an order's charge, from the
// charge step or from the provider's callback. It is idempotent: a repeated
// or late answer changes nothing twice, and a capture that lands after its
// order ended is refunded.
func (r *Runner) ChargeResult(ctx context.Context, orderID, provider string, res allot.PaymentResult) (allot.Order, error) {
	var to allot.OrderStatus
	var cause string
	switch res.Status {
	case allot.PaymentSucceeded:
		to, cause = allot.OrderReserved, fmt.Sprintf("payment captured by %s", provider)
		if res.PaymentID != "" {
			cause += " (" + res.PaymentID + ")"
		}
	case allot.PaymentDeclined:
		to, cause = allot.OrderPaymentFailed, fmt.Sprintf("payment declined by %s: %s", provider, trim(res.Reason, 200))
	case allot.PaymentPending:
		return r.eng.GetOrder(ctx, orderID)
	default:
		return allot.Order{}, permanent(fmt.Errorf("%s answered the charge with status %q", provider, res.Status))
	}
	o, err := r.eng.TransitionFrom(ctx, orderID, allot.OrderAwaitingPayment, to, cause)
	if allot.CodeOf(err) != allot.CodeInvalidTransition {
		return o, err
	}
	// The order moved on without this answer. A capture for an order that
	// ended is given back; anything else was already applied.
	if res.Status == allot.PaymentSucceeded && !o.Status.Live() {
		r.log.Warn("payment captured for an order that had ended; refunding", "order_id", o.ID, "status", o.Status)
		return o, r.eng.ScheduleSteps(ctx, allot.Step{Kind: allot.StepRefund, OrderID: o.ID,
			Cause: fmt.Sprintf("payment captured after the order was %s", o.Status)})
	}
	return o, nil
}

type refundWorker struct {
	river.WorkerDefaults[refundArgs]
	r *Runner
}

func (w *refundWorker) Work(ctx context.Context, job *river.Job[refundArgs]) error {
	r := w.r
	o, err := r.order(ctx, job.Args.OrderID)
	if err != nil {
		return err
	}
	// A live order keeps its payment, whatever scheduled this.
	if o.Status.Live() || o.Payment == nil || o.Total == nil {
		return nil
	}
	p, ok := r.cfg.Payments[o.Payment.Provider]
	if !ok {
		return permanent(fmt.Errorf("payment provider %q is not configured", o.Payment.Provider))
	}
	res, err := p.Refund(ctx, allot.PaymentRequest{Key: refundKey(o.ID), ChargeKey: chargeKey(o.ID), OrderID: o.ID,
		Amount: *o.Total, Customer: o.CustomerID, Simulate: o.Payment.Simulate})
	if err != nil {
		return effectErr("refunding at "+o.Payment.Provider, err)
	}
	switch res.Status {
	case allot.PaymentSucceeded:
		r.log.Info("refund", "order_id", o.ID, "provider", o.Payment.Provider, "status", res.Status, "cause", job.Args.Cause)
		// A crash before this, or a second step refunding the same order
		// (the provider pays back once: same key), records it again:
		// subscribers de-duplicate by its key (docs/events.md).
		return r.eng.RecordPayment(ctx, o, allot.EventPaymentRefunded, map[string]any{
			"order_id": o.ID, "provider": o.Payment.Provider, "refund_id": res.PaymentID, "key": refundKey(o.ID),
			"amount": o.Total, "cause": job.Args.Cause})
	case allot.PaymentNothingToRefund:
		r.log.Info("refund", "order_id", o.ID, "provider", o.Payment.Provider, "status", res.Status, "cause", job.Args.Cause)
		return nil
	case allot.PaymentPending:
		// Not done until the provider says so: ask again later under the
		// same key, which answers the refund's final state. A snooze is
		// not a failed try.
		r.log.Info("refund pending; asking again later", "order_id", o.ID, "provider", o.Payment.Provider, "after", r.cfg.RefundPoll)
		return river.JobSnooze(r.cfg.RefundPoll)
	}
	return fmt.Errorf("%s answered the refund with %q: %s", o.Payment.Provider, res.Status, trim(res.Reason, 200))
}

type sellerWorker struct {
	river.WorkerDefaults[sellerArgs]
	r *Runner
}

func (w *sellerWorker) Work(ctx context.Context, job *river.Job[sellerArgs]) error {
	r := w.r
	o, err := r.order(ctx, job.Args.OrderID)
	if err != nil {
		return err
	}
	if o.Status != allot.OrderReserved {
		return nil
	}
	// No lock is held here: the seller is called between two transactions,
	// and its answer applies only if the order is still reserved.
	ans, err := r.cfg.Sellers.Confirm(ctx, allot.SellerRequest{Key: sellerKey(o.ID), Order: o})
	if isPermanent(err) {
		// The seller's endpoint refuses the request itself: a refusal.
		ans, err = allot.SellerAnswer{Decision: allot.SellerRejected, Reason: "the seller's endpoint refused the request: " + trim(err.Error(), 200)}, nil
	}
	if err != nil {
		return fmt.Errorf("asking the seller: %w", err)
	}
	_, err = r.SellerAnswer(ctx, o.ID, ans)
	if allot.CodeOf(err) == allot.CodeInvalidTransition {
		return nil // the order moved on (cancelled, timed out) meanwhile
	}
	return err
}

// SellerAnswer applies a seller's decision on a paid order, from the seller
// step or the seller's later answer. Repeats change nothing; an answer for
// an order that is no longer reserved is refused with
// CodeInvalidTransition (and the order returned).
func (r *Runner) SellerAnswer(ctx context.Context, orderID string, a allot.SellerAnswer) (allot.Order, error) {
	switch a.Decision {
	case allot.SellerAccepted:
		cause := "the seller made the booking"
		if a.Reference != "" {
			cause += " (" + trim(a.Reference, 100) + ")"
		}
		return r.eng.TransitionFrom(ctx, orderID, allot.OrderReserved, allot.OrderConfirmed, cause)
	case allot.SellerRejected:
		cause := "the seller refused the booking"
		if a.Reason != "" {
			cause += ": " + trim(a.Reason, 200)
		}
		return r.eng.TransitionFrom(ctx, orderID, allot.OrderReserved, allot.OrderRejected, cause)
	case allot.SellerPending:
		return r.eng.GetOrder(ctx, orderID)
	}
	return allot.Order{}, permanent(fmt.Errorf("unknown seller decision %q", a.Decision))
}

type notifyWorker struct {
	river.WorkerDefaults[notifyArgs]
	r *Runner
}

func (w *notifyWorker) Work(ctx context.Context, job *river.Job[notifyArgs]) error {
	r := w.r
	o, err := r.order(ctx, job.Args.OrderID)
	if err != nil {
		return err
	}
	if o.Status != allot.OrderConfirmed {
		return nil
	}
	c, err := r.eng.GetCustomer(ctx, o.CustomerID)
	if err != nil {
		if allot.CodeOf(err) == allot.CodeNotFound {
			return permanent(err)
		}
		return err
	}
	// The order's status is the record that the message went: a crash
	// between sending and recording resends the same message (same key,
	// same Message-ID), which receivers de-duplicate.
	if err := r.cfg.Notifier.Notify(ctx, confirmation(o, c)); err != nil {
		return effectErr("notifying "+c.ID, err)
	}
	_, err = r.eng.TransitionFrom(ctx, o.ID, allot.OrderConfirmed, allot.OrderNotified, "confirmation sent to "+c.Email)
	if allot.CodeOf(err) == allot.CodeInvalidTransition {
		return nil // cancelled while the message was on its way
	}
	return err
}

func confirmation(o allot.Order, c allot.Customer) allot.Notification {
	var b strings.Builder
	name := c.Name
	if name == "" {
		name = c.ID
	}
	fmt.Fprintf(&b, "Dear %s,\n\nyour booking %s is confirmed.\n\n", name, o.ID)
	for _, l := range o.Lines {
		fmt.Fprintf(&b, "- %d x %s", l.Quantity, l.ResourceID)
		switch {
		case l.CheckIn != nil && l.CheckOut != nil:
			fmt.Fprintf(&b, ", %s to %s", l.CheckIn, l.CheckOut)
		case l.Slot != "":
			fmt.Fprintf(&b, ", %s", l.Slot)
		}
		b.WriteString("\n")
	}
	if o.Total != nil {
		fmt.Fprintf(&b, "\nTotal paid: %s %s\n", o.Total.Amount(), o.Total.Currency)
	}
	return allot.Notification{Key: notifyKey(o.ID), OrderID: o.ID, To: c.Email,
		Subject: "Your booking " + o.ID + " is confirmed", Body: b.String()}
}

type sweepWorker struct {
	river.WorkerDefaults[sweepArgs]
	r *Runner
}

// Work expires holds past their time. It runs on the leader only (River's
// periodic jobs).
func (w *sweepWorker) Work(ctx context.Context, job *river.Job[sweepArgs]) error {
	var errs []error
	for {
		n, err := w.r.eng.Sweep(ctx, 500)
		if err != nil {
			errs = append(errs, err)
		}
		if err != nil || n < 500 {
			break
		}
	}
	return errors.Join(errs...)
}

type paymentTimeoutWorker struct {
	river.WorkerDefaults[paymentTimeoutArgs]
	r *Runner
}

// Work expires the order if it is still awaiting payment (its capacity is
// released, and a refund asked in case a charge is still landing).
func (w *paymentTimeoutWorker) Work(ctx context.Context, job *river.Job[paymentTimeoutArgs]) error {
	_, err := w.r.eng.TransitionFrom(ctx, job.Args.OrderID, allot.OrderAwaitingPayment, allot.OrderExpired, job.Args.Cause)
	if c := allot.CodeOf(err); c == allot.CodeInvalidTransition || c == allot.CodeNotFound {
		return nil
	}
	return err
}

type sellerTimeoutWorker struct {
	river.WorkerDefaults[sellerTimeoutArgs]
	r *Runner
}

// Work rejects the order if its seller still has not answered (refunded,
// released).
func (w *sellerTimeoutWorker) Work(ctx context.Context, job *river.Job[sellerTimeoutArgs]) error {
	_, err := w.r.eng.TransitionFrom(ctx, job.Args.OrderID, allot.OrderReserved, allot.OrderRejected, job.Args.Cause)
	if c := allot.CodeOf(err); c == allot.CodeInvalidTransition || c == allot.CodeNotFound {
		return nil
	}
	return err
}
