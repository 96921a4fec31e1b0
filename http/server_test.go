package http_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	nethttp "net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	allothttp "github.com/allot/allot/http"
	"github.com/allot/allot/store/postgres"
	"github.com/allot/allot/store/postgres/pgtest"
	"github.com/allot/allot/store/sqlite"
	"github.com/allot/allot/store/storetest"
)

type api struct {
	t     testing.TB
	h     nethttp.Handler
	store allot.Store
}

// newAPI serves the API on a fresh SQLite store with the batched engine,
// as allot serve runs by default.
func newAPI(t testing.TB) *api {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "allot.db"))
	if err != nil {
		t.Fatal(err)
	}
	return apiOn(t, s)
}

func apiOn(t testing.TB, s allot.Store) *api {
	eng := engine.New(s, engine.Options{Batching: engine.Batching{Workers: 2}})
	t.Cleanup(func() { eng.Close(); s.Close() })
	return &api{t: t, h: allothttp.New(eng, nil), store: s}
}

// newPostgresAPI is newAPI on PostgreSQL, whose text refuses what SQLite
// keeps (NUL characters): bad input must still be a 4xx there.
func newPostgresAPI(t *testing.T) *api {
	url := pgtest.URL(t)
	s, err := postgres.Open(context.Background(), url, postgres.Options{Schema: pgtest.Schema(t, url)})
	if err != nil {
		t.Fatal(err)
	}
	return apiOn(t, s)
}

type resp struct {
	status int
	header nethttp.Header
	body   []byte
}

func (r resp) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response is not a JSON object: %v: %s", err, r.body)
	}
	return m
}

func (a *api) do(method, path, body string, hdr ...string) resp {
	a.t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	a.h.ServeHTTP(rec, req)
	return resp{rec.Code, rec.Header(), rec.Body.Bytes()}
}

func (a *api) mustDo(want int, method, path, body string, hdr ...string) map[string]any {
	a.t.Helper()
	r := a.do(method, path, body, hdr...)
	if r.status != want {
		a.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body)
	}
	if want == 204 {
		return nil
	}
	return r.json(a.t)
}

func (a *api) seed() {
	a.mustDo(201, "POST", "/v1/resources", `{"id":"room","name":"Double","kind":"nightly","capacity":1,"price":{"amount":"99.50","currency":"EUR"}}`)
	a.mustDo(201, "POST", "/v1/resources", `{"id":"pricey","name":"Pricey","kind":"stock","capacity":100,"price":{"amount":"999999999999.999999","currency":"PTS"}}`)
	a.mustDo(201, "POST", "/v1/resources", `{"id":"book","name":"Book","kind":"stock","capacity":3}`)
	a.mustDo(201, "POST", "/v1/resources", `{"id":"class","name":"Yoga","kind":"slot","capacity":10,"slots":[{"id":"mon-9","starts_at":"2037-01-04T09:00:00Z"}]}`)
}

func TestFlows(t *testing.T) {
	a := newAPI(t)
	a.seed()
	h := a.mustDo(201, "POST", "/v1/holds", `{"lines":[{"resource_id":"room","quantity":1,"check_in":"2037-02-01","check_out":"2037-02-03"},{"resource_id":"class","quantity":2,"slot":"mon-9"}],"ttl_seconds":60,"customer_id":"c9"}`)
	if h["status"] != "active" || h["expires_at"] == nil {
		t.Fatalf("hold %v", h)
	}
	hid := h["id"].(string)
	if got := a.mustDo(200, "GET", "/v1/holds/"+hid, ""); got["id"] != hid {
		t.Fatalf("get hold %v", got)
	}
	o := a.mustDo(201, "POST", "/v1/orders", fmt.Sprintf(`{"hold_id":%q}`, hid))
	if o["status"] != "reserved" || o["customer_id"] != "c9" || o["total"].(map[string]any)["amount"] != "199.00" {
		t.Fatalf("order %v", o)
	}
	oid := o["id"].(string)
	av := a.mustDo(200, "GET", "/v1/resources/room/availability?from=2037-02-01&to=2037-02-04", "")
	bs := av["buckets"].([]any)
	if len(bs) != 3 || bs[0].(map[string]any)["available"] != 0.0 || bs[2].(map[string]any)["available"] != 1.0 {
		t.Fatalf("availability %v", av)
	}
	list := a.mustDo(200, "GET", "/v1/orders?customer_id=c9&status=reserved", "")
	if len(list["orders"].([]any)) != 1 {
		t.Fatalf("list %v", list)
	}
	c := a.mustDo(200, "POST", "/v1/orders/"+oid+"/cancel", `{"reason":"plans changed"}`)
	if c["status"] != "cancelled" || len(c["history"].([]any)) != 2 {
		t.Fatalf("cancel %v", c)
	}
	a.mustDo(200, "POST", "/v1/orders/"+oid+"/cancel", "")
	got := a.mustDo(200, "GET", "/v1/orders/"+oid, "")
	if got["status"] != "cancelled" {
		t.Fatalf("order after cancel %v", got)
	}
	// Direct purchase of stock (seed 001), restock, release.
	a.mustDo(201, "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":3}]}`)
	a.mustDo(409, "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":1}]}`)
	a.mustDo(200, "PUT", "/v1/resources/book/capacity", `{"capacity":4}`)
	h2 := a.mustDo(201, "POST", "/v1/holds", `{"lines":[{"resource_id":"book","quantity":1}]}`)
	a.mustDo(204, "DELETE", "/v1/holds/"+h2["id"].(string), "")
	a.mustDo(204, "DELETE", "/v1/holds/"+h2["id"].(string), "")
	a.mustDo(201, "POST", "/v1/resources/class/slots", `{"id":"tue-9","starts_at":"2037-01-05T09:00:00Z","capacity":4}`)
	a.mustDo(200, "PUT", "/v1/resources/class/capacity", `{"slot":"tue-9","capacity":5}`)
	r := a.mustDo(200, "GET", "/v1/resources/class", "")
	if len(r["slots"].([]any)) != 2 {
		t.Fatalf("resource %v", r)
	}
	a.mustDo(200, "GET", "/healthz", "")
	storetest.CheckInvariants(t, context.Background(), a.store, "room", "book", "class")
}

// TestErrors checks that bad input gets a 4xx problem that says what is
// wrong, never a 500, on both stores.
func TestErrors(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testErrors(t, newAPI(t)) })
	t.Run("postgres", func(t *testing.T) { testErrors(t, newPostgresAPI(t)) })
}

func testErrors(t *testing.T, a *api) {
	a.seed()
	stay := func(extra string) string {
		return `{"lines":[{"resource_id":"room","quantity":1,"check_in":"2037-02-01","check_out":"2037-02-03"` + extra + `}]}`
	}
	cases := []struct {
		name, method, path, body string
		status                   int
		code, field              string
	}{
		{"malformed JSON", "POST", "/v1/holds", `{"lines":`, 400, "malformed-request", ""},
		{"not an object", "POST", "/v1/holds", `[1,2]`, 400, "malformed-request", ""},
		{"empty body", "POST", "/v1/holds", ``, 400, "malformed-request", ""},
		{"two values", "POST", "/v1/holds", stay("") + `{}`, 400, "malformed-request", ""},
		{"unknown field", "POST", "/v1/holds", `{"lines":[],"colour":"red"}`, 400, "malformed-request", "colour"},
		{"wrong type", "POST", "/v1/holds", `{"lines":[{"resource_id":"book","quantity":"2"}]}`, 400, "malformed-request", "lines.quantity"},
		{"bad date", "POST", "/v1/holds", `{"lines":[{"resource_id":"room","quantity":1,"check_in":"01/02/2027","check_out":"2037-02-03"}]}`, 400, "malformed-request", "lines.check_in"},
		{"date as a number", "POST", "/v1/holds", `{"lines":[{"resource_id":"room","quantity":1,"check_in":"2037-02-01","check_out":20270203}]}`, 400, "malformed-request", "lines.check_out"},
		{"bad capacity range date", "PUT", "/v1/resources/room/capacity", `{"from":"2037-02-30","to":"2037-03-01","capacity":1}`, 400, "malformed-request", "from"},
		{"zero quantity", "POST", "/v1/holds", `{"lines":[{"resource_id":"book","quantity":0}]}`, 422, "validation-failed", "lines[0].quantity"},
		{"negative quantity", "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":-1}]}`, 422, "validation-failed", "lines[0].quantity"},
		{"stay in the past", "POST", "/v1/holds", `{"lines":[{"resource_id":"room","quantity":1,"check_in":"2020-02-01","check_out":"2020-02-03"}]}`, 422, "validation-failed", "lines[0].check_in"},
		{"past order", "POST", "/v1/orders", `{"lines":[{"resource_id":"room","quantity":1,"check_in":"2020-02-01","check_out":"2020-02-03"}]}`, 422, "validation-failed", "lines[0].check_in"},
		{"no check-out", "POST", "/v1/holds", `{"lines":[{"resource_id":"room","quantity":1,"check_in":"2037-02-03"}]}`, 422, "validation-failed", "lines[0].check_out"},
		{"no dates", "POST", "/v1/holds", `{"lines":[{"resource_id":"room","quantity":1}]}`, 422, "validation-failed", "lines[0].check_in"},
		{"check-out before check-in", "POST", "/v1/holds", `{"lines":[{"resource_id":"room","quantity":1,"check_in":"2037-02-03","check_out":"2037-02-01"}]}`, 422, "validation-failed", "lines[0].check_out"},
		{"unknown resource", "POST", "/v1/holds", `{"lines":[{"resource_id":"ghost","quantity":1}]}`, 422, "validation-failed", "lines[0].resource_id"},
		{"unknown slot", "POST", "/v1/holds", `{"lines":[{"resource_id":"class","quantity":1,"slot":"sun"}]}`, 422, "validation-failed", "lines[0].slot"},
		{"ttl zero", "POST", "/v1/holds", `{"lines":[{"resource_id":"book","quantity":1}],"ttl_seconds":0}`, 422, "validation-failed", "ttl_seconds"},
		{"no lines", "POST", "/v1/holds", `{"lines":[]}`, 422, "validation-failed", "lines"},
		{"too much", "POST", "/v1/holds", `{"lines":[{"resource_id":"book","quantity":4}]}`, 409, "insufficient-capacity", ""},
		{"bad kind", "POST", "/v1/resources", `{"name":"x","kind":"weekly","capacity":1}`, 422, "validation-failed", "kind"},
		{"bad price", "POST", "/v1/resources", `{"name":"x","kind":"stock","capacity":1,"price":{"amount":"-1","currency":"EUR"}}`, 400, "malformed-request", ""},
		{"float price", "POST", "/v1/resources", `{"name":"x","kind":"stock","capacity":1,"price":{"amount":12.5,"currency":"EUR"}}`, 400, "malformed-request", ""},
		{"price finer than its currency", "POST", "/v1/resources", `{"name":"x","kind":"stock","capacity":1,"price":{"amount":"12.505","currency":"EUR"}}`, 422, "validation-failed", "price"},
		{"yen with decimals", "POST", "/v1/resources", `{"name":"x","kind":"stock","capacity":1,"price":{"amount":"10.5","currency":"JPY"}}`, 422, "validation-failed", "price"},
		{"slot time without a zone", "POST", "/v1/resources", `{"name":"x","kind":"slot","capacity":1,"slots":[{"id":"a","starts_at":"2037-01-04 09:00"}]}`, 400, "malformed-request", ""},
		{"missing capacity", "POST", "/v1/resources", `{"name":"x","kind":"stock"}`, 422, "validation-failed", "capacity"},
		{"duplicate id", "POST", "/v1/resources", `{"id":"book","name":"x","kind":"stock","capacity":1}`, 409, "already-exists", "id"},
		{"name of 201 characters", "POST", "/v1/resources", `{"name":"` + strings.Repeat("é", 201) + `","kind":"stock","capacity":1}`, 422, "validation-failed", "name"},
		{"bad id", "POST", "/v1/resources", `{"id":"a b","name":"x","kind":"stock","capacity":1}`, 422, "validation-failed", "id"},
		{"negative capacity", "PUT", "/v1/resources/book/capacity", `{"capacity":-5}`, 422, "validation-failed", "capacity"},
		{"NUL in a string", "POST", "/v1/holds", `{"lines":[{"resource_id":"book","quantity":1}],"customer_id":"a\u0000b"}`, 400, "malformed-request", ""},
		{"NUL in a name", "POST", "/v1/resources", `{"name":"x\u0000","kind":"stock","capacity":1}`, 400, "malformed-request", ""},
		{"NUL in a query", "GET", "/v1/orders?customer_id=%00", ``, 400, "malformed-request", "customer_id"},
		{"invalid UTF-8 in a query", "GET", "/v1/orders?customer_id=%ff%fe", ``, 400, "malformed-request", "customer_id"},
		{"NUL in a path", "GET", "/v1/holds/a%00b", ``, 400, "malformed-request", ""},
		{"slot beyond year 9999", "POST", "/v1/resources", `{"name":"x","kind":"slot","capacity":1,"slots":[{"id":"a","starts_at":"9999-12-31T23:00:00-02:00"}]}`, 422, "validation-failed", "slots[0].starts_at"},
		{"added slot before year 1", "POST", "/v1/resources/class/slots", `{"id":"old","starts_at":"0000-01-01T00:00:00+01:00"}`, 422, "validation-failed", ".starts_at"},
		{"total overflows", "POST", "/v1/orders", `{"lines":[{"resource_id":"pricey","quantity":20}]}`, 422, "validation-failed", "lines[0].quantity"},
		{"availability without range", "GET", "/v1/resources/room/availability", ``, 422, "validation-failed", "from"},
		{"availability bad date", "GET", "/v1/resources/room/availability?from=x&to=2037-01-01", ``, 422, "validation-failed", "from"},
		{"unknown resource path", "GET", "/v1/resources/ghost", ``, 404, "not-found", ""},
		{"unknown hold", "GET", "/v1/holds/hld_x", ``, 404, "not-found", ""},
		{"unknown order cancel", "POST", "/v1/orders/ord_x/cancel", ``, 404, "not-found", ""},
		{"bad status filter", "GET", "/v1/orders?status=lost", ``, 422, "validation-failed", "status"},
		{"bad limit", "GET", "/v1/orders?limit=ten", ``, 422, "validation-failed", "limit"},
		{"limit too big", "GET", "/v1/orders?limit=1000", ``, 422, "validation-failed", "limit"},
		{"no route", "GET", "/v2/things", ``, 404, "not-found", ""},
		{"wrong method", "PATCH", "/v1/orders", ``, 405, "method-not-allowed", ""},
		{"oversized body", "POST", "/v1/holds", `{"customer_id":"` + strings.Repeat("x", allothttp.MaxBody) + `"}`, 413, "request-too-large", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := a.do(c.method, c.path, c.body)
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %s", r.status, c.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("Content-Type %q", ct)
			}
			p := r.json(t)
			if p["type"] != allothttp.ProblemBase+c.code || p["code"] != c.code || p["status"] != float64(c.status) || p["title"] == "" || p["detail"] == "" {
				t.Fatalf("problem %v, want code %s", p, c.code)
			}
			if c.field != "" && p["field"] != c.field {
				t.Fatalf("field %v, want %s", p["field"], c.field)
			}
			// The detail speaks of the request, not of the server's code.
			if d, _ := p["detail"].(string); strings.Contains(d, "Go struct") || strings.Contains(d, "2006-01-02T15") || strings.Contains(d, "moneyJSON") {
				t.Fatalf("detail shows the server's internals: %s", d)
			}
		})
	}
	t.Run("capacity below usage", func(t *testing.T) {
		a.mustDo(201, "POST", "/v1/holds", `{"lines":[{"resource_id":"room","quantity":1,"check_in":"2037-06-01","check_out":"2037-06-03"}]}`)
		p := a.mustDo(409, "PUT", "/v1/resources/room/capacity", `{"from":"2037-05-30","to":"2037-06-05","capacity":0}`)
		b, _ := p["bucket"].(map[string]any)
		if p["code"] != "capacity-below-usage" || b["key"] != "2037-06-01" {
			t.Fatalf("problem %v", p)
		}
	})
	t.Run("name of 200 characters in more bytes", func(t *testing.T) {
		a.mustDo(201, "POST", "/v1/resources", `{"name":"`+strings.Repeat("é", 200)+`","kind":"stock","capacity":1}`)
	})
	t.Run("body not UTF-8", func(t *testing.T) {
		r := a.do("POST", "/v1/customers", "{\"id\":\"c-utf\",\"name\":\"Gr\xe2ce\",\"email\":\"g@example.com\"}")
		if r.status != 400 || !strings.Contains(string(r.body), "UTF-8") {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	})
	t.Run("Idempotency-Key not UTF-8", func(t *testing.T) {
		r := a.do("POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":1}]}`, "Idempotency-Key", "\xff\xfe")
		if r.status != 400 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	})
	t.Run("Idempotency-Key of Allot's own", func(t *testing.T) {
		for _, k := range []string{"payment-callback:acme:evt_1", "openactive-order:oa.p1.x"} {
			r := a.do("POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":1}]}`, "Idempotency-Key", k)
			if r.status != 400 || !strings.Contains(string(r.body), "Idempotency-Key") {
				t.Fatalf("key %q: status %d: %s", k, r.status, r.body)
			}
		}
	})
	t.Run("media types", func(t *testing.T) {
		i := 0
		for ct, want := range map[string]int{"APPLICATION/JSON": 201, "application/json; charset=utf-8": 201, "application/json; charset": 201, "application/jsonp": 415, "application/json-seq": 415} {
			i++
			if r := a.do("POST", "/v1/customers", fmt.Sprintf(`{"id":"mt-%d","name":"M","email":"m@example.com"}`, i), "Content-Type", ct); r.status != want {
				t.Errorf("Content-Type %q: %d, want %d: %s", ct, r.status, want, r.body)
			}
		}
	})
	t.Run("unsupported media type", func(t *testing.T) {
		r := a.do("POST", "/v1/holds", `lines=1`, "Content-Type", "application/x-www-form-urlencoded")
		if r.status != 415 {
			t.Fatalf("status %d", r.status)
		}
	})
	t.Run("refusal names line and bucket", func(t *testing.T) {
		a.mustDo(201, "POST", "/v1/holds", `{"lines":[{"resource_id":"room","quantity":1,"check_in":"2037-04-02","check_out":"2037-04-03"}]}`)
		p := a.mustDo(409, "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":1},{"resource_id":"room","quantity":1,"check_in":"2037-04-01","check_out":"2037-04-05"}]}`)
		b, _ := p["bucket"].(map[string]any)
		if p["code"] != "capacity-reserved-by-hold" || p["line"] != 1.0 || b["resource_id"] != "room" || b["key"] != "2037-04-02" {
			t.Fatalf("problem %v", p)
		}
	})
	t.Run("expired or released hold", func(t *testing.T) {
		h := a.mustDo(201, "POST", "/v1/holds", `{"lines":[{"resource_id":"book","quantity":1}]}`)
		a.mustDo(204, "DELETE", "/v1/holds/"+h["id"].(string), "")
		p := a.mustDo(410, "POST", "/v1/orders", fmt.Sprintf(`{"hold_id":%q}`, h["id"]))
		if p["code"] != "hold-released" {
			t.Fatalf("problem %v", p)
		}
	})
}

func TestIdempotencyKey(t *testing.T) {
	a := newAPI(t)
	a.seed()
	body := `{"lines":[{"resource_id":"book","quantity":1}],"customer_id":"k"}`
	first := a.do("POST", "/v1/orders", body, "Idempotency-Key", "order-1")
	if first.status != 201 {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	// A proxy in front may send another token with the retry: the /v1
	// API does not check it, so it is not part of the request.
	again := a.do("POST", "/v1/orders", body, "Idempotency-Key", "order-1", "Authorization", "Bearer refreshed-token")
	if again.status != 201 || !bytes.Equal(again.body, first.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("repeat: %d %s (replayed %q), want the first response", again.status, again.body, again.header.Get("Idempotent-Replayed"))
	}
	other := a.mustDo(422, "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":2}]}`, "Idempotency-Key", "order-1")
	if other["code"] != "idempotency-key-reused" {
		t.Fatalf("other body: %v", other)
	}
	// A refusal is stored too: the repeat answers the same refusal even
	// after capacity frees up.
	a.mustDo(409, "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":3}]}`, "Idempotency-Key", "big")
	a.mustDo(200, "PUT", "/v1/resources/book/capacity", `{"capacity":10}`)
	a.mustDo(409, "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":3}]}`, "Idempotency-Key", "big")
	// Validation errors are answered the same way again.
	bad := a.do("POST", "/v1/holds", `{"lines":[]}`, "Idempotency-Key", "bad")
	bad2 := a.do("POST", "/v1/holds", `{"lines":[]}`, "Idempotency-Key", "bad")
	if bad.status != 422 || bad2.status != 422 || !bytes.Equal(bad.body, bad2.body) {
		t.Fatalf("validation replay: %d %s / %d %s", bad.status, bad.body, bad2.status, bad2.body)
	}
	list := a.mustDo(200, "GET", "/v1/orders?customer_id=k", "")
	if n := len(list["orders"].([]any)); n != 1 {
		t.Fatalf("%d orders for customer k, want 1", n)
	}
	a.mustDo(400, "POST", "/v1/orders", body, "Idempotency-Key", strings.Repeat("k", 256))
}

// TestIdempotencyRace fires duplicates of one keyed purchase concurrently
// over real HTTP: exactly one order is made; every answer is that order or
// "in flight".
func TestIdempotencyRace(t *testing.T) {
	a := newAPI(t)
	a.seed()
	a.mustDo(200, "PUT", "/v1/resources/book/capacity", `{"capacity":100}`)
	srv := httptest.NewServer(a.h)
	defer srv.Close()
	const n = 24
	var wg sync.WaitGroup
	var mu sync.Mutex
	bodies := map[string]int{}
	statuses := map[int]int{}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := nethttp.NewRequest("POST", srv.URL+"/v1/orders", strings.NewReader(`{"lines":[{"resource_id":"book","quantity":1}]}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", "race")
			res, err := nethttp.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			mu.Lock()
			statuses[res.StatusCode]++
			if res.StatusCode == 201 {
				bodies[string(b)]++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(bodies) != 1 || statuses[201]+statuses[409] != n {
		t.Fatalf("statuses %v, %d distinct 201 bodies; want one order and the rest replays or in-flight", statuses, len(bodies))
	}
	av := a.mustDo(200, "GET", "/v1/resources/book/availability", "")
	if b := av["buckets"].([]any)[0].(map[string]any); b["booked"] != 1.0 {
		t.Fatalf("booked %v, want 1", b["booked"])
	}
}

// FuzzRequests throws arbitrary bodies at every POST and PUT: the answer is
// never a 500, and every error is a problem document.
func FuzzRequests(f *testing.F) {
	for _, s := range []string{
		`{"lines":[{"resource_id":"book","quantity":1}]}`,
		`{"lines":[{"resource_id":"room","quantity":1,"check_in":"2037-02-01","check_out":"2037-02-03"}],"ttl_seconds":5}`,
		`{"lines":[{"resource_id":"class","quantity":2,"slot":"mon-9"}]}`,
		`{"hold_id":"hld_x"}`,
		`{"name":"x","kind":"slot","capacity":3,"slots":[{"id":"a","starts_at":"2037-01-01T00:00:00Z"}],"price":{"amount":"1.5","currency":"USD"}}`,
		`{"from":"2037-01-01","to":"2037-01-09","capacity":2}`,
		`{"capacity":1e99}`, `{"lines":[{"quantity":9223372036854775807}]}`, `null`, `"x"`, `{}`, ``, `{"lines":null}`,
	} {
		f.Add(s)
	}
	a := newAPI(f)
	a.seed()
	paths := []struct{ method, path string }{
		{"POST", "/v1/holds"}, {"POST", "/v1/orders"}, {"POST", "/v1/resources"},
		{"PUT", "/v1/resources/room/capacity"}, {"PUT", "/v1/resources/class/capacity"}, {"POST", "/v1/resources/class/slots"},
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, p := range paths {
			req := httptest.NewRequest(p.method, p.path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			a.h.ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("%s %s %q: %d %s", p.method, p.path, body, rec.Code, rec.Body)
			}
			if rec.Code >= 400 {
				var prob map[string]any
				if err := json.Unmarshal(rec.Body.Bytes(), &prob); err != nil || prob["type"] == nil || rec.Header().Get("Content-Type") != "application/problem+json" {
					t.Fatalf("%s %s %q: error is not a problem: %s", p.method, p.path, body, rec.Body)
				}
			}
		}
	})
}

// TestOrdersFeed pages the RPDE Orders feed: each order once at its latest
// change, next built from the last item, the last page pointing at itself.
func TestOrdersFeed(t *testing.T) {
	a := newAPI(t)
	a.seed()
	var ids []string
	for range 3 {
		o := a.mustDo(201, "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":1}]}`)
		ids = append(ids, o["id"].(string))
	}
	a.mustDo(200, "POST", "/v1/orders/"+ids[0]+"/cancel", "")
	seen := map[string]string{}
	url := "/v1/feeds/orders?limit=2"
	var lastModified float64
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("the feed does not end")
		}
		if raw := a.do("GET", url, "").body; strings.Contains(string(raw), `\u0026`) {
			t.Fatalf("the page escapes '&' in its links: %s", raw)
		}
		p := a.mustDo(200, "GET", url, "")
		items := p["items"].([]any)
		if p["license"] == "" {
			t.Fatalf("page without license: %v", p)
		}
		next := strings.TrimPrefix(p["next"].(string), "http://example.com")
		if len(items) == 0 {
			if next != url {
				t.Fatalf("last page's next is %q, want the requested %q", next, url)
			}
			break
		}
		for _, it := range items {
			m := it.(map[string]any)
			if m["kind"] != "Order" || m["state"] != "updated" || m["modified"].(float64) <= lastModified {
				t.Fatalf("item %v after modified %v", m, lastModified)
			}
			lastModified = m["modified"].(float64)
			seen[m["id"].(string)] = m["data"].(map[string]any)["status"].(string)
		}
		if want := fmt.Sprintf("/v1/feeds/orders?afterChangeNumber=%.0f&limit=2", lastModified); next != want {
			t.Fatalf("next %q, want %q", next, want)
		}
		url = next
	}
	want := map[string]string{ids[0]: "cancelled", ids[1]: "reserved", ids[2]: "reserved"}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("feed %v, want %v", seen, want)
	}
	a.mustDo(422, "GET", "/v1/feeds/orders?afterChangeNumber=x", "")
	a.mustDo(422, "GET", "/v1/feeds/orders?afterChangeNumber=-1", "")
}

// TestEventStream reads the SSE stream, then resumes it with Last-Event-ID
// and gets only what came after.
func TestEventStream(t *testing.T) {
	a := newAPI(t)
	srv := httptest.NewServer(a.h)
	defer srv.Close()
	eng := engine.New(a.store, engine.Options{})
	a.seed()
	a.mustDo(201, "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":1}]}`)
	if _, err := eng.Sequence(context.Background(), 1000); err != nil {
		t.Fatal(err)
	}
	type sse struct{ id, event, data string }
	read := func(lastID string, n int) []sse {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := nethttp.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/events/stream", nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		res, err := nethttp.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("Content-Type %q", ct)
		}
		var out []sse
		var cur sse
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for len(out) < n && sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if cur.id != "" {
					out = append(out, cur)
				}
				cur = sse{}
			case strings.HasPrefix(line, "id: "):
				cur.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				cur.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[6:]
			}
		}
		return out
	}
	all := read("", 5) // four resources and an order
	if len(all) != 5 || all[4].event != allot.EventOrderCreated || all[0].event != allot.EventResourceCreated {
		t.Fatalf("stream %+v", all)
	}
	var ev allot.Event
	if err := json.Unmarshal([]byte(all[4].data), &ev); err != nil || ev.Type != allot.EventOrderCreated || fmt.Sprint(ev.ChangeNo) != all[4].id {
		t.Fatalf("data %s: %v", all[4].data, err)
	}
	a.mustDo(201, "POST", "/v1/orders", `{"lines":[{"resource_id":"book","quantity":1}]}`)
	if _, err := eng.Sequence(context.Background(), 1000); err != nil {
		t.Fatal(err)
	}
	rest := read(all[4].id, 1)
	// Change numbers increase; opportunity feed items take some between
	// events, so they need not be consecutive.
	if next, err := strconv.ParseInt(rest[0].id, 10, 64); len(rest) != 1 || rest[0].event != allot.EventOrderCreated || err != nil || next <= ev.ChangeNo {
		t.Fatalf("resumed after %s: %+v", all[4].id, rest)
	}
	a.mustDo(422, "GET", "/v1/events/stream?after=x", "")
}

func TestWebhookEndpoints(t *testing.T) {
	a := newAPI(t)
	p := a.mustDo(422, "POST", "/v1/webhooks", `{"url":"not a url"}`)
	if p["field"] != "url" {
		t.Fatalf("problem %v", p)
	}
	w := a.mustDo(201, "POST", "/v1/webhooks", `{"url":"http://127.0.0.1:9/hook","event_types":["order.created"]}`)
	id, secret := w["id"].(string), w["secret"].(string)
	if !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("webhook %v", w)
	}
	list := a.mustDo(200, "GET", "/v1/webhooks", "")
	hooks := list["webhooks"].([]any)
	if len(hooks) != 1 || hooks[0].(map[string]any)["secret"] != nil {
		t.Fatalf("the list shows secrets or misses the webhook: %v", list)
	}
	if got := a.mustDo(200, "GET", "/v1/webhooks/"+id, ""); got["secret"] != nil || got["url"] != "http://127.0.0.1:9/hook" {
		t.Fatalf("get %v", got)
	}
	ds := a.mustDo(200, "GET", "/v1/webhooks/"+id+"/deliveries?status=failed", "")
	if len(ds["deliveries"].([]any)) != 0 {
		t.Fatalf("deliveries %v", ds)
	}
	a.mustDo(422, "GET", "/v1/webhooks/"+id+"/deliveries?status=lost", "")
	a.mustDo(404, "POST", "/v1/webhooks/"+id+"/deliveries/dlv_nope/replay", "")
	a.mustDo(204, "DELETE", "/v1/webhooks/"+id, "")
	a.mustDo(404, "GET", "/v1/webhooks/"+id, "")
	a.mustDo(404, "DELETE", "/v1/webhooks/"+id, "")
	a.mustDo(404, "GET", "/v1/webhooks/"+id+"/deliveries", "")
}

// A request its client abandoned is not a server failure: it is not logged
// as an error.
func TestAbandonedRequestIsNotAnError(t *testing.T) {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "allot.db"))
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(s, engine.Options{Batching: engine.Batching{Workers: 2}})
	t.Cleanup(func() { eng.Close(); s.Close() })
	var logs bytes.Buffer
	h := allothttp.New(eng, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	a := &api{t: t, h: h, store: s}
	a.seed()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, path := range []string{"/v1/resources/book/availability", "/v1/orders?customer_id=c1"} {
		req := httptest.NewRequest("GET", path, nil).WithContext(ctx)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	if strings.Contains(logs.String(), `"level":"ERROR"`) {
		t.Fatalf("an abandoned request was logged as an error:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "request abandoned by the client") {
		t.Fatalf("the abandoned requests were not logged at all:\n%s", logs.String())
	}
}

// TestOutcomeUnknown: a write whose commit answer was lost is answered 503
// outcome-unknown with Retry-After, not as a refusal or an internal error;
// the retry with its Idempotency-Key answers what was done, and it was
// done once.
func TestOutcomeUnknown(t *testing.T) {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "allot.db"))
	if err != nil {
		t.Fatal(err)
	}
	ls := &storetest.LosingStore{Store: s}
	a := apiOn(t, ls)
	a.seed()
	body := `{"lines":[{"resource_id":"book","quantity":2}]}`
	ls.Lose.Store(true)
	r := a.do("POST", "/v1/holds", body, "Idempotency-Key", "lost-1")
	ls.Lose.Store(false)
	var p map[string]any
	if err := json.Unmarshal(r.body, &p); err != nil || r.status != 503 || p["code"] != "outcome-unknown" ||
		r.header.Get("Retry-After") == "" || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("lost commit answer: %d %v %s", r.status, r.header, r.body)
	}
	again := a.mustDo(201, "POST", "/v1/holds", body, "Idempotency-Key", "lost-1")
	av := a.mustDo(200, "GET", "/v1/resources/book/availability", "")
	b := av["buckets"].([]any)[0].(map[string]any)
	if b["held"] != float64(2) {
		t.Fatalf("held %v after the retry of hold %v, want 2: made once", b["held"], again["id"])
	}
}

// With a public URL set, the feed's links start with it, whatever Host
// the request names.
func TestFeedLinksUsePublicURL(t *testing.T) {
	a := newAPI(t)
	a.h.(*allothttp.Server).SetPublicURL("https://book.example.com/")
	r := a.do("GET", "/v1/feeds/orders?limit=2", "") // the request names Host example.com
	var p map[string]any
	if err := json.Unmarshal(r.body, &p); err != nil || p["next"] != "https://book.example.com/v1/feeds/orders?limit=2" {
		t.Fatalf("next %v (%v): %s", p["next"], err, r.body)
	}
}
