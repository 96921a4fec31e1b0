package http

import (
	nethttp "net/http"
	"time"
	"unicode/utf8"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

type slotJSON struct {
	ID       string     `json:"id"`
	StartsAt *time.Time `json:"starts_at"`
	Capacity *int       `json:"capacity"`
}

func (s slotJSON) input() engine.SlotInput {
	return engine.SlotInput{ID: s.ID, StartsAt: s.StartsAt, Capacity: s.Capacity}
}

type resourceJSON struct {
	ID        string       `json:"id"`
	Name      string       `json:"name"`
	Kind      allot.Kind   `json:"kind"`
	Capacity  *int         `json:"capacity"`
	Slots     []slotJSON   `json:"slots"`
	Price     *allot.Money `json:"price"`
	Threshold *int         `json:"threshold"`
}

func (s *Server) createResource(r *nethttp.Request) (any, error) {
	var in resourceJSON
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	ri := engine.ResourceInput{ID: in.ID, Name: in.Name, Kind: in.Kind, Capacity: in.Capacity, Price: in.Price, Threshold: in.Threshold}
	for _, sl := range in.Slots {
		ri.Slots = append(ri.Slots, sl.input())
	}
	return s.eng.CreateResource(r.Context(), ri)
}

func (s *Server) getResource(r *nethttp.Request) (any, error) {
	return s.eng.GetResource(r.Context(), r.PathValue("id"))
}

func (s *Server) addSlot(r *nethttp.Request) (any, error) {
	var in slotJSON
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	return s.eng.AddSlot(r.Context(), r.PathValue("id"), in.input())
}

type capacityJSON struct {
	From     *allot.Date `json:"from"`
	To       *allot.Date `json:"to"`
	Slot     string      `json:"slot"`
	Capacity *int        `json:"capacity"`
}

func (s *Server) setCapacity(r *nethttp.Request) (any, error) {
	var in capacityJSON
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	id := r.PathValue("id")
	bs, err := s.eng.SetCapacity(r.Context(), id, engine.CapacityInput{From: in.From, To: in.To, Slot: in.Slot, Capacity: in.Capacity})
	if err != nil {
		return nil, err
	}
	return engine.Availability{ResourceID: id, Buckets: bs}, nil
}

func (s *Server) availability(r *nethttp.Request) (any, error) {
	from, err := queryDate(r, "from")
	if err != nil {
		return nil, err
	}
	to, err := queryDate(r, "to")
	if err != nil {
		return nil, err
	}
	return s.eng.Availability(r.Context(), r.PathValue("id"), from, to)
}

type holdJSON struct {
	Lines      []allot.Line `json:"lines"`
	TTLSeconds *int         `json:"ttl_seconds"`
	CustomerID string       `json:"customer_id"`
}

func (s *Server) createHold(r *nethttp.Request) (any, error) {
	var in holdJSON
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	hi := engine.HoldInput{Lines: in.Lines, CustomerID: in.CustomerID}
	if in.TTLSeconds != nil {
		if *in.TTLSeconds < 1 || *in.TTLSeconds > int(engine.MaxHoldTTL.Seconds()) {
			return nil, allot.Invalid("ttl_seconds", "ttl_seconds must be between 1 and %d, got %d", int(engine.MaxHoldTTL.Seconds()), *in.TTLSeconds)
		}
		hi.TTL = time.Duration(*in.TTLSeconds) * time.Second
	}
	return s.eng.CreateHold(r.Context(), hi)
}

func (s *Server) getHold(r *nethttp.Request) (any, error) {
	return s.eng.GetHold(r.Context(), r.PathValue("id"))
}

func (s *Server) releaseHold(r *nethttp.Request) (any, error) {
	_, err := s.eng.ReleaseHold(r.Context(), r.PathValue("id"))
	return nil, err
}

type orderJSON struct {
	HoldID     string              `json:"hold_id"`
	Lines      []allot.Line        `json:"lines"`
	CustomerID string              `json:"customer_id"`
	Payment    *allot.OrderPayment `json:"payment"`
}

// createOrder books, and starts the workflow. With Prefer: wait=N it
// answers with the order once the workflow settles it, or as it stands
// after N seconds; without, at once. (A replay under an Idempotency-Key
// answers with the order as it was created.)
func (s *Server) createOrder(r *nethttp.Request) (any, error) {
	wait, err := preferWait(r)
	if err != nil {
		return nil, err
	}
	var in orderJSON
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	o, err := s.eng.CreateOrder(r.Context(), engine.OrderInput{HoldID: in.HoldID, Lines: in.Lines, CustomerID: in.CustomerID, Payment: in.Payment})
	if err != nil || wait == 0 {
		return o, err
	}
	return s.await(r.Context(), o, wait)
}

func (s *Server) getOrder(r *nethttp.Request) (any, error) {
	return s.eng.GetOrder(r.Context(), r.PathValue("id"))
}

type orderPage struct {
	Orders     []allot.Order `json:"orders"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

func (s *Server) listOrders(r *nethttp.Request) (any, error) {
	q := r.URL.Query()
	limit, err := queryInt(r, "limit")
	if err != nil {
		return nil, err
	}
	f := allot.OrderFilter{CustomerID: q.Get("customer_id"), Status: allot.OrderStatus(q.Get("status")), AfterID: q.Get("cursor"), Limit: limit}
	os, err := s.eng.ListOrders(r.Context(), f)
	if err != nil {
		return nil, err
	}
	p := orderPage{Orders: os}
	if p.Orders == nil {
		p.Orders = []allot.Order{}
	}
	if limit == 0 {
		limit = engine.DefaultPage
	}
	if n := len(os); n > 0 && n == limit {
		p.NextCursor = os[n-1].ID
	}
	return p, nil
}

type cancelJSON struct {
	Reason string `json:"reason"`
}

func (s *Server) cancelOrder(r *nethttp.Request) (any, error) {
	var in cancelJSON
	if err := decodeOptional(r, &in); err != nil {
		return nil, err
	}
	cause := "cancelled by client"
	if in.Reason != "" {
		if utf8.RuneCountInString(in.Reason) > 500 {
			return nil, allot.Invalid("reason", "reason may be at most 500 characters")
		}
		cause += ": " + in.Reason
	}
	return s.eng.CancelOrder(r.Context(), r.PathValue("id"), cause)
}
