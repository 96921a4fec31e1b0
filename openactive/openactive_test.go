package openactive_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/openactive"
	"github.com/allot/allot/store/storetest"
)

const base = "http://booking.test"

type oa struct {
	t   *testing.T
	h   *openactive.Handler
	eng *engine.Engine
}

func newOA(t *testing.T, open storetest.Opener) *oa {
	s := open(t)
	eng := engine.New(s, engine.Options{Batching: engine.Batching{Workers: 2}})
	t.Cleanup(func() { eng.Close(); s.Close() })
	return &oa{t: t, eng: eng, h: openactive.New(eng, openactive.Config{BaseURL: base, TestInterface: true,
		Partners: map[string]string{"key-2": "partner-2"}}, nil)}
}

type reply struct {
	status int
	hdr    map[string][]string
	raw    []byte
	body   map[string]any
}

func (o *oa) do(method, path, body string, hdr ...string) reply {
	o.t.Helper()
	r := httptest.NewRequest(method, base+path, strings.NewReader(body))
	r.Header.Set("Content-Type", openactive.MediaType)
	r.Header.Set("X-OpenActive-Test-Client-Id", "partner-1")
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			r.Header.Del(hdr[i])
		} else {
			r.Header.Set(hdr[i], hdr[i+1])
		}
	}
	w := httptest.NewRecorder()
	o.h.ServeHTTP(w, r)
	rep := reply{status: w.Code, hdr: w.Header(), raw: w.Body.Bytes()}
	_ = json.Unmarshal(rep.raw, &rep.body)
	return rep
}

// opportunity makes a session through the test interface.
func (o *oa) opportunity(criteria string) (session, offer string) {
	o.t.Helper()
	r := o.do("POST", "/api/openbooking/test-interface/datasets/uat-ci/opportunities",
		`{"@type":"ScheduledSession","test:testOpportunityCriteria":"https://openactive.io/test-interface#`+criteria+`"}`)
	if r.status != 201 {
		o.t.Fatalf("test interface: %d %s", r.status, r.raw)
	}
	session = r.body["@id"].(string)
	res := strings.TrimSuffix(strings.TrimPrefix(session, base+"/api/identifiers/scheduled-sessions/"), "/s1")
	return session, base + "/api/identifiers/session-series/" + res + "#/offers/0"
}

func orderBody(typ, session, offer string, n int, extra string) string {
	var items []string
	for i := range n {
		items = append(items, fmt.Sprintf(`{"@type":"OrderItem","position":%d,"acceptedOffer":%q,"orderedItem":%q}`, i, offer, session))
	}
	return fmt.Sprintf(`{"@context":"https://openactive.io/","@type":%q,"brokerRole":"https://openactive.io/AgentBroker","seller":%q,"orderedItem":[%s]%s}`,
		typ, base+"/api/identifiers/sellers/1", strings.Join(items, ","), extra)
}

// feedCapacity pages the ScheduledSession feed to its end, checking the
// RPDE rules on the way, and returns the session's remaining capacity.
func (o *oa) feedCapacity(session string) int {
	o.t.Helper()
	url, last, capacity := "/feeds/scheduled-sessions", int64(-1), -1
	for range 100 {
		r := o.do("GET", url, "")
		if r.status != 200 || !strings.HasPrefix(r.hdr["Cache-Control"][0], "public") || r.body["license"] == nil {
			o.t.Fatalf("feed page %s: %d %v %s", url, r.status, r.hdr, r.raw)
		}
		items := r.body["items"].([]any)
		next := r.body["next"].(string)
		if len(items) == 0 {
			if next != base+url {
				o.t.Fatalf("last page's next %q, want the requested URL %q", next, base+url)
			}
			return capacity
		}
		for _, it := range items {
			m := it.(map[string]any)
			mod := int64(m["modified"].(float64))
			if mod <= last {
				o.t.Fatalf("modified %d after %d", mod, last)
			}
			last = mod
			if d := m["data"].(map[string]any); d["@id"] == session {
				capacity = int(d["remainingAttendeeCapacity"].(float64))
			}
		}
		url = strings.TrimPrefix(next, base)
	}
	o.t.Fatal("the feed never ended")
	return 0
}

func errorCounts(r reply) map[string]int {
	out := map[string]int{}
	for _, it := range r.body["orderedItem"].([]any) {
		m := it.(map[string]any)
		errs, _ := m["error"].([]any)
		if len(errs) == 0 {
			out["ok"]++
			continue
		}
		e := errs[0].(map[string]any)
		if _, ok := e["@context"]; ok {
			out["@context in an item error"]++
		}
		out[e["@type"].(string)]++
	}
	return out
}

func TestLeasing(t *testing.T) {
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) {
			o := newOA(t, open)
			s, off := o.opportunity("TestOpportunityBookableFiveSpaces")
			steps := []struct {
				path               string
				uuid               string
				n, status, shown   int
				feed               int
				ok, reserved, gone int
			}{
				{"order-quote-templates", "aaaaaaaa-0000-4000-8000-000000000001", 3, 200, 5, 2, 3, 0, 0},
				{"order-quotes", "aaaaaaaa-0000-4000-8000-000000000001", 3, 200, 5, 2, 3, 0, 0}, // C2 renews: no change
				{"order-quotes", "aaaaaaaa-0000-4000-8000-000000000001", 3, 200, 5, 2, 3, 0, 0},
				{"order-quote-templates", "aaaaaaaa-0000-4000-8000-000000000002", 10, 409, 2, 2, 2, 3, 5},
				{"order-quote-templates", "aaaaaaaa-0000-4000-8000-000000000003", 2, 200, 2, 0, 2, 0, 0},
				{"order-quote-templates", "aaaaaaaa-0000-4000-8000-000000000004", 1, 409, 0, 0, 0, 1, 0},
			}
			for i, st := range steps {
				extra := ""
				if st.path == "order-quotes" {
					extra = `,"customer":{"@type":"Person","email":"ada@example.com"}`
				}
				r := o.do("PUT", "/api/openbooking/"+st.path+"/"+st.uuid, orderBody("OrderQuote", s, off, st.n, extra))
				if r.status != st.status {
					t.Fatalf("step %d: %d %s", i, r.status, r.raw)
				}
				c := errorCounts(r)
				if c["ok"] != st.ok || c["OpportunityCapacityIsReservedByLeaseError"] != st.reserved || c["OpportunityHasInsufficientCapacityError"] != st.gone || c["@context in an item error"] > 0 {
					t.Fatalf("step %d: item errors %v", i, c)
				}
				for _, it := range r.body["orderedItem"].([]any) {
					sess := it.(map[string]any)["orderedItem"].(map[string]any)
					if int(sess["remainingAttendeeCapacity"].(float64)) != st.shown {
						t.Fatalf("step %d: shows %v, want %d", i, sess["remainingAttendeeCapacity"], st.shown)
					}
				}
				if _, leased := r.body["lease"]; leased != (st.status == 200) {
					t.Fatalf("step %d: lease %v", i, r.body["lease"])
				}
				if got := o.feedCapacity(s); got != st.feed {
					t.Fatalf("step %d: the feed shows %d, want %d", i, got, st.feed)
				}
			}
			// Deleting a quote releases its lease, and is always a success.
			for range 2 {
				if r := o.do("DELETE", "/api/openbooking/order-quotes/aaaaaaaa-0000-4000-8000-000000000003", ""); r.status != 204 {
					t.Fatalf("delete quote: %d", r.status)
				}
			}
			if got := o.feedCapacity(s); got != 2 {
				t.Fatalf("after deleting a quote the feed shows %d", got)
			}
		})
	}
}

func TestBooking(t *testing.T) {
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) {
			o := newOA(t, open)
			free, freeOff := o.opportunity("TestOpportunityBookableFree")
			paid, paidOff := o.opportunity("TestOpportunityBookableNonFree")
			total := func(p float64) string {
				return fmt.Sprintf(`,"totalPaymentDue":{"@type":"PriceSpecification","price":%v,"priceCurrency":"GBP"}`, p)
			}
			pay := `,"payment":{"@type":"Payment","identifier":"pay-1"}`
			cases := []struct {
				name, session, offer, extra string
				quote                       bool
				status                      int
				errType                     string
			}{
				{"free after C1 and C2", free, freeOff, total(0), true, 201, ""},
				{"free without a lease", free, freeOff, total(0), false, 201, ""},
				{"free with payment", free, freeOff, total(0) + pay, true, 400, "UnnecessaryPaymentDetailsError"},
				{"free with a wrong total", free, freeOff, total(1), true, 400, "TotalPaymentDueMismatchError"},
				{"paid", paid, paidOff, total(20) + pay, true, 201, ""},
				{"paid without a lease", paid, paidOff, total(20) + pay, false, 201, ""},
				{"paid without payment", paid, paidOff, total(20), false, 400, "MissingPaymentDetailsError"},
				{"paid with a wrong total", paid, paidOff, total(10) + pay, false, 400, "TotalPaymentDueMismatchError"},
			}
			for i, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					uuid := fmt.Sprintf("bbbbbbbb-0000-4000-8000-%012d", i)
					before := o.feedCapacity(c.session)
					if c.quote {
						for _, p := range []string{"order-quote-templates", "order-quotes"} {
							if r := o.do("PUT", "/api/openbooking/"+p+"/"+uuid, orderBody("OrderQuote", c.session, c.offer, 2, "")); r.status != 200 {
								t.Fatalf("%s: %d %s", p, r.status, r.raw)
							}
						}
					}
					body := orderBody("Order", c.session, c.offer, 2, c.extra)
					r := o.do("PUT", "/api/openbooking/orders/"+uuid, body)
					if r.status != c.status || (c.errType != "" && r.body["@type"] != c.errType) {
						t.Fatalf("B: %d %s", r.status, r.raw)
					}
					again := o.do("PUT", "/api/openbooking/orders/"+uuid, body)
					if again.status != r.status || string(again.raw) != string(r.raw) {
						t.Fatalf("the repeated B answered %d %s, the first %d %s", again.status, again.raw, r.status, r.raw)
					}
					// A booking takes two spaces; a refused one leaves its
					// quote's lease (until it expires or is deleted).
					want := before
					if c.quote || c.status == 201 {
						want -= 2
					}
					if c.status == 201 {
						if _, ok := r.body["lease"]; ok {
							t.Fatal("B carries a lease")
						}
					}
					if got := o.feedCapacity(c.session); got != want {
						t.Fatalf("feed shows %d, want %d", got, want)
					}
				})
			}
		})
	}
}

func TestPartnersAndOrdersFeed(t *testing.T) {
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) { partnersAndOrdersFeed(t, open) })
	}
}

func partnersAndOrdersFeed(t *testing.T, open storetest.Opener) {
	o := newOA(t, open)
	s, off := o.opportunity("TestOpportunityBookableFree")
	uuid := "cccccccc-0000-4000-8000-000000000001"
	body := orderBody("Order", s, off, 1, `,"totalPaymentDue":{"@type":"PriceSpecification","price":0,"priceCurrency":"GBP"}`)
	if r := o.do("PUT", "/api/openbooking/orders/"+uuid, body, "X-OpenActive-Test-Client-Id", ""); r.status != 401 {
		t.Fatalf("no partner: %d", r.status)
	}
	if r := o.do("PUT", "/api/openbooking/orders/"+uuid, body); r.status != 201 {
		t.Fatalf("B: %d %s", r.status, r.raw)
	}
	feed := func(hdr ...string) []any {
		r := o.do("GET", "/api/openbooking/orders-rpde", "", hdr...)
		if r.status != 200 || r.body["license"] != nil || strings.Contains(strings.Join(r.hdr["Cache-Control"], ","), "public") {
			t.Fatalf("orders feed: %d %v %s", r.status, r.hdr, r.raw)
		}
		return r.body["items"].([]any)
	}
	if items := feed(); len(items) != 1 || items[0].(map[string]any)["id"] != uuid {
		t.Fatalf("partner 1's feed: %v", items)
	}
	other := []string{"X-OpenActive-Test-Client-Id", "", "Authorization", "Bearer key-2"}
	if items := feed(other...); len(items) != 0 {
		t.Fatalf("partner 2 sees %v", items)
	}
	if r := o.do("DELETE", "/api/openbooking/orders/"+uuid, "", other...); r.status != 404 {
		t.Fatalf("partner 2 deleting partner 1's order: %d", r.status)
	}
	for _, bad := range []string{"orders/abc%00def", "order-quotes/abc%00def", "order-quotes/" + strings.Repeat("a", 65)} {
		if r := o.do("DELETE", "/api/openbooking/"+bad, ""); r.status != 400 {
			t.Fatalf("DELETE %s: %d %s, want 400", bad, r.status, r.raw)
		}
	}
	if r := o.do("DELETE", "/api/openbooking/orders/"+uuid, ""); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.raw)
	}
	if items := feed(); len(items) != 1 || items[0].(map[string]any)["state"] != "deleted" {
		t.Fatalf("after the deletion: %v", items)
	}
	if got := o.feedCapacity(s); got != 10 {
		t.Fatalf("capacity after the deletion: %d", got)
	}
	// The test interface's dataset deletion turns its sessions into
	// deleted feed items.
	if r := o.do("DELETE", "/api/openbooking/test-interface/datasets/uat-ci", ""); r.status != 204 {
		t.Fatalf("delete dataset: %d %s", r.status, r.raw)
	}
	states := map[string]int{}
	for _, it := range o.do("GET", "/feeds/scheduled-sessions", "").body["items"].([]any) {
		m := it.(map[string]any)
		if _, hasData := m["data"]; hasData == (m["state"] == "deleted") {
			t.Fatalf("item %v", m)
		}
		states[m["state"].(string)]++
	}
	if states["deleted"] != 1 || states["updated"] != 0 {
		t.Fatalf("after deleting the dataset: %v", states)
	}
	r := o.do("GET", "/openactive", "")
	if r.status != 200 || !strings.Contains(string(r.raw), `"endpointUrl":"`+base+`/api/openbooking"`) {
		t.Fatalf("dataset site: %d %s", r.status, r.raw)
	}
}

// TestLeaseRace races C1s of many quotes for the last spaces: no more are
// leased than exist, and the feed ends at exactly what is left.
func TestLeaseRace(t *testing.T) {
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) {
			o := newOA(t, open)
			s, off := o.opportunity("TestOpportunityBookableFiveSpaces")
			var granted atomic.Int64
			var wg sync.WaitGroup
			for i := range 16 {
				wg.Go(func() {
					n := 1 + i%2
					r := o.do("PUT", fmt.Sprintf("/api/openbooking/order-quote-templates/dddddddd-0000-4000-8000-%012d", i), orderBody("OrderQuote", s, off, n, ""))
					switch r.status {
					case 200:
						granted.Add(int64(n))
					case 409:
					default:
						t.Errorf("C1: %d %s", r.status, r.raw)
					}
				})
			}
			wg.Wait()
			if g := granted.Load(); g > 5 || g < 4 {
				t.Fatalf("%d spaces leased of 5", g)
			}
			if got := o.feedCapacity(s); got != 5-int(granted.Load()) {
				t.Fatalf("feed shows %d after %d leased", got, granted.Load())
			}
		})
	}
}

// TestBookingCorrections: a refused B leaves the UUID free and the lease
// in place; a C2 after the booking is refused; deleting the quote of a
// booked UUID does not touch the order.
func TestBookingCorrections(t *testing.T) {
	for name, open := range storetest.Stores() {
		t.Run(name, func(t *testing.T) {
			o := newOA(t, open)
			s, off := o.opportunity("TestOpportunityBookableFiveSpaces")
			uuid := "eeeeeeee-0000-4000-8000-000000000001"
			if r := o.do("PUT", "/api/openbooking/order-quotes/"+uuid, orderBody("OrderQuote", s, off, 2, "")); r.status != 200 {
				t.Fatalf("C2: %d %s", r.status, r.raw)
			}
			pay := `,"payment":{"@type":"Payment","identifier":"p"}`
			total := func(p int) string {
				return fmt.Sprintf(`,"totalPaymentDue":{"@type":"PriceSpecification","price":%d,"priceCurrency":"GBP"}`, p)
			}
			// Too many items: refused, nothing booked, the lease stands.
			if r := o.do("PUT", "/api/openbooking/orders/"+uuid, orderBody("Order", s, off, 6, total(60)+pay)); r.status != 409 {
				t.Fatalf("B x6: %d %s", r.status, r.raw)
			}
			if got := o.feedCapacity(s); got != 3 {
				t.Fatalf("after the refused B the feed shows %d, want 3 (the lease stands)", got)
			}
			// A wrong total, then the corrected request: booked.
			if r := o.do("PUT", "/api/openbooking/orders/"+uuid, orderBody("Order", s, off, 3, total(10)+pay)); r.status != 400 {
				t.Fatalf("B with a wrong total: %d %s", r.status, r.raw)
			}
			if r := o.do("PUT", "/api/openbooking/orders/"+uuid, orderBody("Order", s, off, 3, total(30)+pay)); r.status != 201 {
				t.Fatalf("the corrected B: %d %s", r.status, r.raw)
			}
			if got := o.feedCapacity(s); got != 2 {
				t.Fatalf("after booking 3 in place of a lease of 2 the feed shows %d, want 2", got)
			}
			if r := o.do("PUT", "/api/openbooking/order-quotes/"+uuid, orderBody("OrderQuote", s, off, 1, "")); r.status != 409 || r.body["@type"] != "OrderAlreadyExistsError" {
				t.Fatalf("C2 after B: %d %s", r.status, r.raw)
			}
			if r := o.do("DELETE", "/api/openbooking/order-quotes/"+uuid, ""); r.status != 204 {
				t.Fatalf("delete quote: %d", r.status)
			}
			if got := o.feedCapacity(s); got != 2 {
				t.Fatalf("deleting the quote of a booked UUID changed the feed to %d", got)
			}
			if r := o.do("DELETE", "/api/openbooking/orders/"+uuid, ""); r.status != 204 {
				t.Fatalf("delete order: %d", r.status)
			}
			if got := o.feedCapacity(s); got != 5 {
				t.Fatalf("after deleting the order the feed shows %d, want 5", got)
			}
		})
	}
}

// TestOutcomeUnknown: when the database's answer to a booking's commit is
// lost, B answers 503 (retry), never a refusal; its retry answers what was
// done. Deleting a lease whose outcome is unknown is not a success either.
func TestOutcomeUnknown(t *testing.T) {
	ls := &storetest.LosingStore{}
	o := newOA(t, func(t testing.TB) allot.Store { ls.Store = storetest.Stores()["sqlite"](t); return ls })
	session, offer := o.opportunity("TestOpportunityBookableFree")
	before := o.feedCapacity(session)
	uuid := "cccccccc-0000-4000-8000-000000000001"
	body := orderBody("Order", session, offer, 2, `,"totalPaymentDue":{"@type":"PriceSpecification","price":0,"priceCurrency":"GBP"}`)

	ls.Lose.Store(true)
	r := o.do("PUT", "/api/openbooking/orders/"+uuid, body)
	ls.Lose.Store(false)
	if r.status != 503 || r.body["@type"] != "TemporarilyUnableToProduceOrderError" {
		t.Fatalf("B with its commit answer lost: %d %s", r.status, r.raw)
	}
	again := o.do("PUT", "/api/openbooking/orders/"+uuid, body)
	if again.status != 201 {
		t.Fatalf("the retried B: %d %s; the first one was booked", again.status, again.raw)
	}
	if got := o.feedCapacity(session); got != before-2 {
		t.Fatalf("feed shows %d spaces, want %d: booked once", got, before-2)
	}

	quote := "cccccccc-0000-4000-8000-000000000002"
	if r := o.do("PUT", "/api/openbooking/order-quotes/"+quote, orderBody("OrderQuote", session, offer, 1, "")); r.status != 200 {
		t.Fatalf("C2: %d %s", r.status, r.raw)
	}
	ls.Lose.Store(true)
	r = o.do("DELETE", "/api/openbooking/order-quotes/"+quote, "")
	ls.Lose.Store(false)
	if r.status != 503 {
		t.Fatalf("deleting a lease with the commit answer lost: %d %s", r.status, r.raw)
	}
	if r := o.do("DELETE", "/api/openbooking/order-quotes/"+quote, ""); r.status != 204 {
		t.Fatalf("deleting it again: %d %s", r.status, r.raw)
	}
}

// A quote of items priced in two currencies has no one total: C2 refuses
// it, as B does, instead of adding pounds to yen.
func TestQuoteInTwoCurrencies(t *testing.T) {
	o := newOA(t, storetest.Stores()["sqlite"])
	gbp, gbpOffer := o.opportunity("TestOpportunityBookableNonFree")
	capacity := 5
	if _, err := o.eng.CreateResource(context.Background(), engine.ResourceInput{ID: "yen-class", Name: "yen class", Kind: allot.KindSlot, Capacity: &capacity,
		Price: &allot.Money{Minor: 1000, Currency: "JPY"},
		Slots: []engine.SlotInput{{ID: "s1", StartsAt: ptr(time.Now().Add(48 * time.Hour))}}}); err != nil {
		t.Fatal(err)
	}
	jpy, jpyOffer := base+"/api/identifiers/scheduled-sessions/yen-class/s1", base+"/api/identifiers/session-series/yen-class#/offers/0"
	body := fmt.Sprintf(`{"@context":"https://openactive.io/","@type":"OrderQuote","brokerRole":"https://openactive.io/AgentBroker","seller":%q,"orderedItem":[`+
		`{"@type":"OrderItem","position":0,"acceptedOffer":%q,"orderedItem":%q},{"@type":"OrderItem","position":1,"acceptedOffer":%q,"orderedItem":%q}]}`,
		base+"/api/identifiers/sellers/1", gbpOffer, gbp, jpyOffer, jpy)
	r := o.do("PUT", "/api/openbooking/order-quotes/aaaaaaaa-0000-4000-8000-00000000c2c2", body)
	if r.status != 400 || !strings.Contains(string(r.raw), "GBP and JPY") {
		t.Fatalf("C2 in two currencies: %d %s", r.status, r.raw)
	}
}

func ptr[T any](v T) *T { return &v }
