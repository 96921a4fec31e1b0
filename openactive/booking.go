package openactive

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	nethttp "net/http"
	"strconv"
	"strings"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

// request is an OrderQuote (C1, C2) or an Order (B).
type request struct {
	Type        string          `json:"@type"`
	Broker      json.RawMessage `json:"broker"`
	BrokerRole  string          `json:"brokerRole"`
	Seller      json.RawMessage `json:"seller"`
	Customer    json.RawMessage `json:"customer"`
	OrderedItem []struct {
		Position      *int            `json:"position"`
		AcceptedOffer json.RawMessage `json:"acceptedOffer"`
		OrderedItem   json.RawMessage `json:"orderedItem"`
	} `json:"orderedItem"`
	TotalPaymentDue *struct {
		Price         *float64 `json:"price"`
		PriceCurrency string   `json:"priceCurrency"`
	} `json:"totalPaymentDue"`
	Payment json.RawMessage `json:"payment"`
}

// item is one OrderItem resolved against Allot.
type item struct {
	position int
	res      allot.Resource
	slot     allot.Slot
	bucket   allot.Bucket
	errType  string // an item error found while resolving
	errDesc  string
}

// resolve reads the items' opportunities; an item that names none, or
// an offer of another, carries its error.
func (h *Handler) resolve(ctx context.Context, req request) ([]item, error) {
	if len(req.OrderedItem) == 0 || len(req.OrderedItem) > engine.MaxLines {
		return nil, allot.Invalid("orderedItem", "an order needs 1 to %d orderedItem", engine.MaxLines)
	}
	if s := idOf(req.Seller); s != h.ids.seller() {
		return nil, allot.Invalid("seller", "seller %q is not this booking system's seller %q", s, h.ids.seller())
	}
	items := make([]item, len(req.OrderedItem))
	for i, oi := range req.OrderedItem {
		it := item{position: i}
		if oi.Position != nil {
			it.position = *oi.Position
		}
		resID, slotID, ok := h.ids.parseSession(idOf(oi.OrderedItem))
		var res allot.Resource
		var err error
		if ok {
			res, err = h.eng.GetResource(ctx, resID)
		}
		switch {
		case !ok || allot.CodeOf(err) == allot.CodeNotFound || (err == nil && res.Kind != allot.KindSlot):
			it.errType, it.errDesc = "UnknownOpportunityError", "no such ScheduledSession: "+idOf(oi.OrderedItem)
		case err != nil:
			return nil, err
		default:
			it.res = res
			it.slot, it.bucket, err = h.slot(ctx, res, slotID)
			if allot.CodeOf(err) == allot.CodeNotFound {
				it.errType, it.errDesc = "UnknownOpportunityError", "no such ScheduledSession: "+idOf(oi.OrderedItem)
			} else if err != nil {
				return nil, err
			} else if idOf(oi.AcceptedOffer) != h.ids.offer(res.ID) {
				it.errType, it.errDesc = "UnknownOfferError", "no such Offer for this opportunity: "+idOf(oi.AcceptedOffer)
			}
		}
		items[i] = it
	}
	return items, nil
}

func lines(items []item) []allot.Line {
	out := make([]allot.Line, len(items))
	for i, it := range items {
		out[i] = allot.Line{ResourceID: it.res.ID, Slot: it.slot.ID, Quantity: 1}
	}
	return out
}

// total is what the items cost, in minor units of two decimals, or an
// error if their prices are in different currencies (no one total).
func total(items []item) (float64, string, error) {
	t, cur := 0.0, ""
	for _, it := range items {
		t += price(it.res.Price)
		if it.res.Price != nil {
			c := currency(it.res.Price)
			if cur != "" && c != cur {
				return 0, "", allot.Errorf(allot.CodeCurrencyMismatch, "the items are priced in %s and %s; an Order is paid in one currency", cur, c)
			}
			cur = c
		}
	}
	if cur == "" {
		cur = "GBP"
	}
	return math.Round(t*100) / 100, cur, nil
}

// orderItems renders the items, with the remaining capacity to show and
// each item's errors.
func (h *Handler) orderItems(items []item, remaining func(int) int, errs func(int) []obj, booked string) []obj {
	out := make([]obj, len(items))
	for i, it := range items {
		o := obj{"@type": "OrderItem", "position": it.position}
		if it.res.ID != "" {
			b := it.bucket
			sess := h.sessionObj(it.res, it.slot, b, true)
			sess["remainingAttendeeCapacity"] = remaining(i)
			o["acceptedOffer"] = h.offerObj(it.res)
			o["orderedItem"] = sess
		}
		if booked != "" {
			o["@id"] = booked + "#/orderedItems/" + strconv.Itoa(i+1)
			o["orderItemStatus"] = "https://openactive.io/OrderItemConfirmed"
		}
		if e := errs(i); len(e) > 0 {
			o["error"] = e
		}
		out[i] = o
	}
	return out
}

func (h *Handler) envelope(typ, id string, req request, withCustomer bool) obj {
	o := obj{"@context": contextURL, "@type": typ, "@id": id, "seller": h.sellerObj(),
		"bookingService": obj{"@type": "BookingService", "name": "Allot", "url": h.base + "/"}}
	if len(req.Broker) > 0 {
		o["broker"] = json.RawMessage(req.Broker)
	}
	if req.BrokerRole != "" {
		o["brokerRole"] = req.BrokerRole
	}
	if withCustomer && len(req.Customer) > 0 {
		o["customer"] = json.RawMessage(req.Customer)
	}
	return o
}

func paymentDue(t float64, cur string) obj {
	return obj{"@type": "PriceSpecification", "price": t, "priceCurrency": cur}
}

// quote answers C1 (a template, no customer) and C2: it leases all items
// or none, under the quote's UUID (a repeat renews, never adds).
func (h *Handler) quote(c2 bool) nethttp.HandlerFunc {
	return func(w nethttp.ResponseWriter, r *nethttp.Request) {
		ctx := r.Context()
		uuid, ok := h.pathUUID(w, r)
		if !ok {
			return
		}
		var req request
		if _, err := readBody(r, &req); err != nil {
			h.fail(w, r, err)
			return
		}
		items, err := h.resolve(ctx, req)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		body := h.envelope("OrderQuote", h.ids.quote(uuid), req, c2)
		body["orderRequiresApproval"] = false
		t, cur, err := total(items)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		body["totalPaymentDue"] = paymentDue(t, cur)
		itemErr := func(i int) []obj {
			if items[i].errType == "" {
				return nil
			}
			return []obj{itemError(items[i].errType, items[i].errDesc)}
		}
		for _, it := range items {
			if it.errType != "" {
				body["orderedItem"] = h.orderItems(items, func(i int) int { return items[i].bucket.Available() }, itemErr, "")
				h.write(w, 409, body)
				return
			}
		}
		if _, err := h.eng.Store().GetOrder(ctx, orderID(partnerOf(ctx), uuid)); err == nil {
			h.write(w, 409, oaError("OrderAlreadyExistsError", "this UUID is already booked as an Order", 409))
			return
		}
		res, err := h.eng.Lease(ctx, engine.LeaseInput{ID: leaseID(partnerOf(ctx), uuid), Lines: lines(items), TTL: h.cfg.LeaseTTL})
		if allot.CodeOf(err) == allot.CodeHoldConverted {
			h.write(w, 409, oaError("OrderAlreadyExistsError", "this UUID is already booked as an Order", 409))
			return
		}
		if err != nil {
			h.fail(w, r, err)
			return
		}
		remaining := func(i int) int { return res.Lines[i].Remaining }
		errs := func(i int) []obj {
			v := res.Lines[i]
			switch {
			case v.Reserved > 0:
				return []obj{itemError("OpportunityCapacityIsReservedByLeaseError", "other leases hold the remaining spaces; they may come back")}
			case v.Gone > 0:
				return []obj{itemError("OpportunityHasInsufficientCapacityError", "the opportunity has no spaces left for this item")}
			}
			return nil
		}
		body["orderedItem"] = h.orderItems(items, remaining, errs, "")
		if !res.Granted {
			h.write(w, 409, body)
			return
		}
		body["lease"] = obj{"@type": "Lease", "leaseExpires": dateTime(res.Hold.ExpiresAt)}
		h.write(w, 200, body)
	}
}

// unsure reports an error after which it is not known whether the write
// was made: an internal failure, or an unknown commit outcome. A refusal
// (any other domain error) is an answer.
func unsure(err error) bool {
	c := allot.CodeOf(err)
	return err != nil && (c == "" || c == allot.CodeOutcomeUnknown)
}

// pathUUID is the request's {uuid}, or false after answering 400 when it
// is not one (a NUL would reach the database).
func (h *Handler) pathUUID(w nethttp.ResponseWriter, r *nethttp.Request) (string, bool) {
	uuid := r.PathValue("uuid")
	if !uuidPattern.MatchString(uuid) {
		h.write(w, 400, oaError("InvalidAPIRequestError", "the UUID in the path is not a UUID", 400))
		return "", false
	}
	return uuid, true
}

// deleteQuote releases the lease; always a success.
func (h *Handler) deleteQuote(w nethttp.ResponseWriter, r *nethttp.Request) {
	if _, ok := h.pathUUID(w, r); !ok {
		return
	}
	_, err := h.eng.ReleaseHold(r.Context(), leaseID(partnerOf(r.Context()), r.PathValue("uuid")))
	if unsure(err) {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(nethttp.StatusNoContent)
}

// book answers B: it books all items or none, from the quote's lease when
// it has one for the same items, in one transaction; a repeat of the same
// request answers the same 201 body.
func (h *Handler) book(w nethttp.ResponseWriter, r *nethttp.Request) {
	ctx := r.Context()
	uuid, ok := h.pathUUID(w, r)
	if !ok {
		return
	}
	var req request
	raw, err := readBody(r, &req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	partner := partnerOf(ctx)
	id := orderID(partner, uuid)
	store := h.eng.Store()
	// A repeat answers what the first answered: keyed by the order, hashed
	// by the request.
	claim := allot.IdempotencyClaim{Key: allot.KeyOpenActiveOrder + id, Hash: hashOf(raw), Token: newToken(), At: h.eng.Now()}
	rec, err := store.ClaimIdempotencyKey(ctx, claim, time.Minute)
	switch {
	case err != nil:
		h.fail(w, r, err)
		return
	case rec != nil && rec.Hash != claim.Hash:
		h.write(w, 409, oaError("OrderAlreadyExistsError", "an Order with this UUID was already made with another request", 409))
		return
	case rec != nil && !rec.Done:
		// The same request is running: wait for its answer a little.
		for range 50 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			if rec, err = store.ClaimIdempotencyKey(ctx, claim, time.Minute); err != nil || rec == nil || rec.Done || rec.Hash != claim.Hash {
				break
			}
		}
		switch {
		case err != nil:
			h.fail(w, r, err)
		case rec == nil: // the first gave up (refused, or failed): this one runs
			status, body := h.bookOnce(ctx, req, uuid, id, claim)
			h.writeRaw(w, status, body)
		case rec.Hash != claim.Hash:
			h.write(w, 409, oaError("OrderAlreadyExistsError", "an Order with this UUID was already made with another request", 409))
		case rec.Done:
			h.writeRaw(w, rec.Status, rec.Body)
		default:
			w.Header().Set("Retry-After", "1")
			h.write(w, 503, oaError("TemporarilyUnableToProduceOrderError", "the first request for this Order is still running; retry", 503))
		}
		return
	case rec != nil:
		h.writeRaw(w, rec.Status, rec.Body)
		return
	}
	status, body := h.bookOnce(ctx, req, uuid, id, claim)
	h.writeRaw(w, status, body)
}

func (h *Handler) bookOnce(ctx context.Context, req request, uuid, id string, claim allot.IdempotencyClaim) (int, []byte) {
	store := h.eng.Store()
	finish := func(status int, body obj) (int, []byte) {
		// Nothing was booked: the UUID stays free for a corrected (or,
		// once capacity frees up, repeated) request.
		if err := store.ReleaseIdempotencyKey(context.WithoutCancel(ctx), claim.Key, claim.Token); err != nil {
			h.log.Error("releasing an OpenActive order key", "key", claim.Key, "err", err)
		}
		return status, mustJSON(body)
	}
	items, err := h.resolve(ctx, req)
	if err != nil {
		if de, ok := err.(*allot.Error); ok {
			return finish(400, oaError("InvalidAPIRequestError", de.Detail, 400))
		}
		h.log.ErrorContext(ctx, "openactive booking failed", "order_id", id, "err", err)
		return finish(500, oaError("InternalApplicationError", "the server failed; it is logged", 500))
	}
	for _, it := range items {
		if it.errType != "" {
			return finish(409, oaError(it.errType, it.errDesc, 409))
		}
	}
	t, cur, err := total(items)
	if err != nil {
		return finish(400, oaError("InvalidAPIRequestError", err.(*allot.Error).Detail, 400))
	}
	switch {
	case req.TotalPaymentDue == nil || req.TotalPaymentDue.Price == nil || math.Abs(*req.TotalPaymentDue.Price-t) > 0.005:
		return finish(400, oaError("TotalPaymentDueMismatchError", fmt.Sprintf("totalPaymentDue.price must be %.2f %s", t, cur), 400))
	case t == 0 && len(req.Payment) > 0 && string(req.Payment) != "null":
		return finish(400, oaError("UnnecessaryPaymentDetailsError", "the order is free; send no payment", 400))
	case t > 0 && (len(req.Payment) == 0 || string(req.Payment) == "null"):
		return finish(400, oaError("MissingPaymentDetailsError", "the order costs "+strconv.FormatFloat(t, 'f', 2, 64)+" "+cur+"; send payment", 400))
	}
	// One transaction: the quote's lease (if any) is given back and the
	// items booked, or neither.
	in := engine.OrderInput{ID: id, Prepaid: true, Lines: lines(items), ReplacesHold: leaseID(partnerOf(ctx), uuid)}
	leased := false
	if hold, err := store.GetHold(ctx, in.ReplacesHold); err == nil && hold.Status == allot.HoldActive && hold.ExpiresAt.After(h.eng.Now()) {
		leased = engine.SameLines(hold.Lines, in.Lines)
	}
	body := h.envelope("Order", h.ids.order(uuid), req, true)
	body["identifier"] = uuid
	body["totalPaymentDue"] = paymentDue(t, cur)
	if t > 0 {
		body["payment"] = json.RawMessage(req.Payment)
	}
	render := func(v any, err error) (int, []byte) {
		if err != nil {
			return h.bookingError(err)
		}
		// The capacity shown is what remained when the request came, less
		// what it booked (a lease of the same items counted it already).
		taken := map[allot.BucketKey]int{}
		if !leased {
			for _, l := range lines(items) {
				taken[allot.BucketKey{ResourceID: l.ResourceID, Key: l.Slot}]++
			}
		}
		b := body
		b["orderedItem"] = h.orderItems(items, func(i int) int {
			return max(0, items[i].bucket.Available()-taken[allot.BucketKey{ResourceID: items[i].res.ID, Key: items[i].slot.ID}])
		}, func(int) []obj { return nil }, h.ids.order(uuid))
		return 201, mustJSON(b)
	}
	idem := &engine.Idem{Key: claim.Key, Token: claim.Token, Render: render, OnlyEffects: true}
	o, err := h.eng.CreateOrder(engine.WithIdem(ctx, idem), in)
	status, out := render(o, err)
	if !idem.Completed {
		if status >= 500 {
			h.log.ErrorContext(ctx, "openactive booking failed", "order_id", id, "err", err)
		}
		var m obj
		_ = json.Unmarshal(out, &m)
		return finish(status, m)
	}
	return status, out
}

// bookingError renders a refused B.
func (h *Handler) bookingError(err error) (int, []byte) {
	switch allot.CodeOf(err) {
	case allot.CodeInsufficientCapacity, allot.CodeCapacityReservedByHold:
		return 409, mustJSON(oaError("OpportunityHasInsufficientCapacityError", "an item's opportunity has no spaces left; nothing was booked", 409))
	case allot.CodeAlreadyExists, allot.CodeHoldConverted:
		return 409, mustJSON(oaError("OrderAlreadyExistsError", "an Order with this UUID already exists", 409))
	case allot.CodeOutcomeUnknown:
		return 503, mustJSON(outcomeUnknown())
	case "":
		return 500, mustJSON(oaError("InternalApplicationError", "the server failed; it is logged", 500))
	}
	return 400, mustJSON(oaError("InvalidAPIRequestError", err.Error(), 400))
}

// deleteOrder cancels an order (a soft delete: the Orders feed shows it
// deleted); a lease under the UUID is released too.
func (h *Handler) deleteOrder(w nethttp.ResponseWriter, r *nethttp.Request) {
	ctx := r.Context()
	if _, ok := h.pathUUID(w, r); !ok {
		return
	}
	id := orderID(partnerOf(ctx), r.PathValue("uuid"))
	_, lerr := h.eng.ReleaseHold(ctx, leaseID(partnerOf(ctx), r.PathValue("uuid")))
	if unsure(lerr) {
		h.fail(w, r, lerr)
		return
	}
	leaseFound := lerr == nil
	_, err := h.eng.CancelOrder(ctx, id, "deleted by the booking partner")
	switch allot.CodeOf(err) {
	case "":
		if err != nil {
			h.fail(w, r, err)
			return
		}
	case allot.CodeNotFound:
		if leaseFound {
			w.WriteHeader(nethttp.StatusNoContent)
			return
		}
		h.write(w, 404, oaError("UnknownOrderError", "no Order with this UUID", 404))
		return
	case allot.CodeInvalidTransition: // already ended: deleting again is a success
	default:
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(nethttp.StatusNoContent)
}

// ordersFeed is the partner's Orders feed (RPDE): its orders at their
// latest change; a cancelled order appears as deleted.
func (h *Handler) ordersFeed(w nethttp.ResponseWriter, r *nethttp.Request) {
	ctx := r.Context()
	after, ok := h.afterChange(w, r)
	if !ok {
		return
	}
	prefix := orderID(partnerOf(ctx), "")
	var items []obj
	cursor, last := after, after
	for len(items) == 0 {
		page, err := h.eng.OrdersFeed(ctx, cursor, 500)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		for _, it := range page {
			cursor = it.ChangeNo
			uuid, ok := strings.CutPrefix(it.ID, prefix)
			if !ok {
				continue
			}
			var o allot.Order
			if err := json.Unmarshal(it.Data, &o); err != nil {
				h.fail(w, r, err)
				return
			}
			last = it.ChangeNo
			if it.Deleted || !o.Status.Live() {
				items = append(items, obj{"state": "deleted", "kind": "Order", "id": uuid, "modified": it.ChangeNo})
				continue
			}
			items = append(items, obj{"state": "updated", "kind": "Order", "id": uuid, "modified": it.ChangeNo, "data": h.feedOrder(uuid, o)})
		}
		if len(page) < 500 {
			break
		}
	}
	next := h.ids.booking() + "/orders-rpde?afterChangeNumber=" + strconv.FormatInt(last, 10)
	if len(items) == 0 {
		next = h.base + r.URL.RequestURI()
		items = []obj{}
	}
	w.Header().Set("Cache-Control", "no-store")
	h.write(w, 200, obj{"next": next, "items": items})
}

func (h *Handler) feedOrder(uuid string, o allot.Order) obj {
	var its []obj
	t := 0.0
	for i, l := range o.Lines {
		t += price(l.UnitPrice) * float64(l.Quantity)
		for range l.Quantity {
			its = append(its, obj{"@type": "OrderItem", "@id": h.ids.order(uuid) + "#/orderedItems/" + strconv.Itoa(len(its)+1),
				"orderItemStatus": "https://openactive.io/OrderItemConfirmed", "position": i,
				"acceptedOffer": h.ids.offer(l.ResourceID), "orderedItem": h.ids.session(l.ResourceID, l.Slot)})
		}
	}
	cur := "GBP"
	if o.Total != nil {
		cur = currency(o.Total)
	}
	return obj{"@context": contextURL, "@type": "Order", "@id": h.ids.order(uuid), "identifier": uuid,
		"orderedItem": its, "totalPaymentDue": paymentDue(math.Round(t*100)/100, cur)}
}
