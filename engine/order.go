package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/allot/allot"
)

// OrderInput books either a hold (HoldID) or Lines directly.
type OrderInput struct {
	HoldID     string
	Lines      []allot.Line
	CustomerID string
	// Payment chooses the provider of a priced order (the workflow's
	// default when nil).
	Payment *allot.OrderPayment
	// ID, when set, is the order's id (a channel's own id for it, such as
	// an OpenActive Order UUID); generated when empty. An id already taken
	// is refused (already-exists) with ReplacesHold; without it, the
	// insert fails and so does the request, with nothing taken.
	ID string
	// Prepaid says the channel took the payment (an OpenActive booking
	// partner): the workflow skips the charge.
	Prepaid bool
	// ReplacesHold names a hold (an OpenActive lease) this order takes the
	// place of: in the same transaction its claims are given back before
	// the order's lines are decided, and it ends converted. A refusal
	// leaves it as it was.
	ReplacesHold string
}

// CreateOrder books capacity: it converts a hold's claims, or claims the
// lines directly, all or nothing.
func (e *Engine) CreateOrder(ctx context.Context, in OrderInput) (allot.Order, error) {
	// An unknown customer is refused before anything is held.
	if err := e.checkOrderCustomer(ctx, in.CustomerID); err != nil {
		return allot.Order{}, err
	}
	switch {
	case in.HoldID != "" && len(in.Lines) > 0:
		return allot.Order{}, allot.Invalid("lines", "give either hold_id or lines, not both")
	case in.HoldID != "":
		return retrying(func() (allot.Order, error) { return e.orderFromHold(ctx, in) })
	case in.ReplacesHold != "":
		return retrying(func() (allot.Order, error) { return e.orderReplacing(ctx, in) })
	case len(in.Lines) == 0:
		return allot.Order{}, allot.Invalid("lines", "give hold_id, or lines to book directly")
	}
	d, err := e.newDemandOf(ctx, e.store, in.Lines)
	if err != nil {
		return allot.Order{}, err
	}
	o, err := e.preparedOrder(d, in, in.CustomerID, "", "booked directly")
	if err != nil {
		return o, err
	}
	v, err := e.do(ctx, d.op(func(ctx context.Context, w *wtx) (any, error) {
		if err := e.fit(ctx, w, d); err != nil {
			return nil, err
		}
		for k, q := range d.need {
			w.lk[k].Booked += q
		}
		if err := w.AddClaims(ctx, d.claims(o.ID, allot.ClaimBooked)); err != nil {
			return nil, err
		}
		return o, e.insertOrder(ctx, w, o)
	}))
	if err != nil {
		return allot.Order{}, err
	}
	return v.(allot.Order), nil
}

func (e *Engine) orderFromHold(ctx context.Context, in OrderInput) (allot.Order, error) {
	h, err := e.store.GetHold(ctx, in.HoldID)
	if errors.Is(err, allot.ErrNotFound) {
		return allot.Order{}, allot.Invalid("hold_id", "hold %q does not exist", in.HoldID)
	}
	if err != nil {
		return allot.Order{}, err
	}
	customer := in.CustomerID
	switch {
	case customer == "":
		customer = h.CustomerID
	case h.CustomerID != "" && h.CustomerID != customer:
		return allot.Order{}, allot.Invalid("customer_id", "hold %q belongs to another customer", h.ID)
	}
	d, err := e.demandOf(ctx, e.store, h.Lines)
	if err != nil {
		return allot.Order{}, err
	}
	if customer != in.CustomerID {
		if err := e.checkOrderCustomer(ctx, customer); err != nil {
			return allot.Order{}, err
		}
	}
	o, err := e.preparedOrder(d, in, customer, h.ID, fmt.Sprintf("booked from hold %s", h.ID))
	if err != nil {
		return o, err
	}
	v, err := e.do(ctx, d.op(func(ctx context.Context, w *wtx) (any, error) {
		h, err := w.LockHold(ctx, in.HoldID)
		if err != nil {
			return nil, err
		}
		if !SameLines(h.Lines, d.lines) {
			return nil, errRetry // renewed with other lines since it was read
		}
		switch {
		case h.Status == allot.HoldConverted:
			return nil, allot.Errorf(allot.CodeHoldConverted, "hold %q is already booked as order %q", h.ID, h.OrderID)
		case h.Status == allot.HoldReleased:
			return nil, allot.Errorf(allot.CodeHoldReleased, "hold %q was released; hold the capacity again", h.ID)
		case h.Status == allot.HoldExpired || !h.ExpiresAt.After(e.now()):
			return nil, allot.Errorf(allot.CodeHoldExpired, "hold %q expired at %s; hold the capacity again", h.ID, h.ExpiresAt.Format("2006-01-02T15:04:05.000Z07:00"))
		}
		claims, err := w.OwnerClaims(ctx, h.ID)
		if err != nil {
			return nil, err
		}
		for _, c := range claims {
			b, ok := w.lk[c.BucketKey]
			if !ok {
				return nil, fmt.Errorf("hold %s claims bucket %v outside its lines", h.ID, c.BucketKey)
			}
			b.Held -= c.Quantity
			b.Booked += c.Quantity
		}
		if err := w.MoveClaims(ctx, h.ID, o.ID, allot.ClaimBooked); err != nil {
			return nil, err
		}
		if err := w.SetHoldStatus(ctx, h.ID, allot.HoldConverted, o.ID); err != nil {
			return nil, err
		}
		return o, e.insertOrder(ctx, w, o)
	}))
	if err != nil {
		return allot.Order{}, err
	}
	return v.(allot.Order), nil
}

// newOrder prices d's lines into a reserved order.
func (e *Engine) newOrder(d *demand, customer, holdID, cause string) (allot.Order, error) {
	now := e.now()
	o := allot.Order{ID: NewID("ord"), Status: allot.OrderReserved, CustomerID: customer, HoldID: holdID,
		CreatedAt: now, UpdatedAt: now,
		History: []allot.Transition{{To: allot.OrderReserved, Cause: cause, At: now}}}
	for i, l := range d.lines {
		ol := allot.OrderLine{Line: l}
		if p := d.res[l.ResourceID].Price; p != nil {
			units := l.Quantity
			if l.CheckIn != nil && l.CheckOut != nil {
				units *= l.CheckIn.DaysUntil(*l.CheckOut)
			}
			unit := *p
			amount, err := p.Times(units)
			if err != nil {
				return o, &allot.Error{Code: allot.CodeInvalid, Field: fmt.Sprintf("lines[%d].quantity", i), Line: i,
					Detail: fmt.Sprintf("the line's amount (%s x %d) is too large to represent", p.Amount(), units)}
			}
			ol.UnitPrice, ol.Amount = &unit, &amount
			if o.Total == nil {
				o.Total = &amount
			} else {
				t, err := o.Total.Add(amount)
				switch {
				case errors.Is(err, allot.ErrMoneyOverflow):
					return o, &allot.Error{Code: allot.CodeInvalid, Field: fmt.Sprintf("lines[%d].quantity", i), Line: i,
						Detail: "the order's total is too large to represent"}
				case err != nil:
					return o, &allot.Error{Code: allot.CodeCurrencyMismatch, Field: fmt.Sprintf("lines[%d].resource_id", i), Line: i,
						Detail: fmt.Sprintf("all priced lines of an order must share one currency: %v", err)}
				}
				o.Total = &t
			}
		}
		o.Lines = append(o.Lines, ol)
	}
	return o, nil
}

func (e *Engine) insertOrder(ctx context.Context, w *wtx, o allot.Order) error {
	// Not a refusal, even on a duplicate id: the op has already taken its
	// capacity in w, and a refusal commits with the batch. An error fails
	// the transaction, so nothing of the op stands. (Order ids are made
	// here; OpenActive's, given by the partner, are looked up in the op
	// before anything is taken.)
	if err := w.InsertOrder(ctx, o); err != nil {
		return err
	}
	w.emit(e.event(allot.EventOrderCreated, firstResource(lineList(o.Lines)), o.ID, o.HoldID, o))
	w.schedule(e.followUps(o, "", o.Status, o.History[0].Cause)...)
	return nil
}

func lineList(ls []allot.OrderLine) []allot.Line {
	out := make([]allot.Line, len(ls))
	for i, l := range ls {
		out[i] = l.Line
	}
	return out
}

// GetOrder returns an order with its history.
func (e *Engine) GetOrder(ctx context.Context, id string) (allot.Order, error) {
	o, err := e.store.GetOrder(ctx, id)
	if errors.Is(err, allot.ErrNotFound) {
		return o, allot.Errorf(allot.CodeNotFound, "order %q does not exist", id)
	}
	return o, err
}

// Page sizes of listings.
const (
	DefaultPage = 50
	MaxPage     = 200
)

// ListOrders lists orders by creation, filtered.
func (e *Engine) ListOrders(ctx context.Context, f allot.OrderFilter) ([]allot.Order, error) {
	if f.Status != "" && !f.Status.Valid() {
		return nil, allot.Invalid("status", "unknown status %q", f.Status)
	}
	if f.Limit == 0 {
		f.Limit = DefaultPage
	}
	if f.Limit < 1 || f.Limit > MaxPage {
		return nil, allot.Invalid("limit", "limit must be between 1 and %d", MaxPage)
	}
	return e.store.ListOrders(ctx, f)
}

// CancelOrder cancels a live order and returns its capacity. Cancelling a
// cancelled order returns it unchanged.
func (e *Engine) CancelOrder(ctx context.Context, id, cause string) (allot.Order, error) {
	return e.Transition(ctx, id, allot.OrderCancelled, cause)
}

// Transition moves an order to status to, recording cause. Moving to a
// status that is not live releases the order's capacity in the same
// transaction. Moving to the status it already has changes nothing.
func (e *Engine) Transition(ctx context.Context, id string, to allot.OrderStatus, cause string) (allot.Order, error) {
	return retrying(func() (allot.Order, error) { return e.transition(ctx, id, "", to, cause) })
}

// TransitionFrom moves an order from status from to status to: a workflow
// step's outcome applies only to the state the step was run for. An order
// already at to is returned unchanged (the step ran before); one in any
// other status is refused with CodeInvalidTransition, and returned.
func (e *Engine) TransitionFrom(ctx context.Context, id string, from, to allot.OrderStatus, cause string) (allot.Order, error) {
	return retrying(func() (allot.Order, error) { return e.transition(ctx, id, from, to, cause) })
}

func (e *Engine) transition(ctx context.Context, id string, from, to allot.OrderStatus, cause string) (allot.Order, error) {
	o, err := e.GetOrder(ctx, id)
	if err != nil {
		return o, err
	}
	d, err := e.demandOf(ctx, e.store, lineList(o.Lines))
	if err != nil {
		return o, err
	}
	v, err := e.do(ctx, d.op(func(ctx context.Context, w *wtx) (any, error) {
		o, err := w.LockOrder(ctx, id)
		if err != nil {
			return nil, err
		}
		if o.Status == to {
			return o, nil
		}
		if from != "" && o.Status != from {
			return o, allot.Errorf(allot.CodeInvalidTransition, "order %q is %s, not %s, and cannot become %s", id, o.Status, from, to)
		}
		if !allot.CanTransition(o.Status, to) {
			return nil, allot.Errorf(allot.CodeInvalidTransition, "order %q is %s and cannot become %s", id, o.Status, to)
		}
		if !to.Live() {
			if err := e.releaseClaims(ctx, w, id, func(b *allot.Bucket, q int) { b.Booked -= q }); err != nil {
				return nil, err
			}
		}
		t := allot.Transition{From: o.Status, To: to, Cause: cause, At: e.now()}
		if err := w.SetOrderStatus(ctx, id, t); err != nil {
			return nil, err
		}
		o.Status, o.UpdatedAt, o.History = to, t.At, append(o.History, t)
		w.emit(e.event(allot.EventOrderStatus, firstResource(lineList(o.Lines)), id, o.HoldID, map[string]any{"order": o, "transition": t}))
		w.schedule(e.followUps(o, t.From, to, cause)...)
		return o, nil
	}))
	if err != nil {
		if o, ok := v.(allot.Order); ok {
			return o, err
		}
		return allot.Order{}, err
	}
	return v.(allot.Order), nil
}

// preparedOrder is the order in asks for, with its channel and payment,
// before anything is decided.
func (e *Engine) preparedOrder(d *demand, in OrderInput, customer, holdID, cause string) (allot.Order, error) {
	o, err := e.newOrder(d, customer, holdID, cause)
	if err != nil {
		return o, err
	}
	if err := e.channel(&o, in); err != nil {
		return allot.Order{}, err
	}
	if err := e.payment(&o, in.Payment, in.Prepaid); err != nil {
		return allot.Order{}, err
	}
	return o, nil
}
