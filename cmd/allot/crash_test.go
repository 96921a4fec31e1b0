package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	nethttp "net/http"

	"github.com/jackc/pgx/v5"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/notify"
	"github.com/allot/allot/notify/smtptest"
	"github.com/allot/allot/payments"
	"github.com/allot/allot/store/postgres"
	"github.com/allot/allot/store/postgres/pgtest"
	"github.com/allot/allot/store/sqlite"
)

// child is one allot serve process of the crash test.
type child struct {
	cmd  *exec.Cmd
	logs *bytes.Buffer
}

// TestWorkflowSurvivesSIGKILL runs the booking workflow under load in a
// child process, kills it with SIGKILL at random moments, restarts it, lets
// it drain, and checks: every order reached a final state, capacity matches
// the live orders exactly, no payment was captured or refunded twice (Allot
// always asks with the order's one key), and a customer's confirmation is
// one message (one Message-ID; resent only when a crash cut its recording). The payment provider, the seller
// and the mail server run in this (surviving) process and count.
func TestWorkflowSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("the crash test takes about a minute")
	}
	for _, db := range []string{"sqlite", "postgres"} {
		t.Run(db, func(t *testing.T) { crashTest(t, db) })
	}
}

func crashTest(t *testing.T, db string) {
	var dbURL string
	var openStore func() (allot.Store, error)
	switch db {
	case "sqlite":
		path := filepath.Join(t.TempDir(), "allot.db")
		dbURL = "sqlite:" + path
		openStore = func() (allot.Store, error) { return sqlite.Open(context.Background(), path) }
	case "postgres":
		url := pgtest.URL(t)
		schema := pgtest.Schema(t, url)
		conn, err := pgx.Connect(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(context.Background(), `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize())
		conn.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		dbURL = url + sep + "search_path=" + schema
		openStore = func() (allot.Store, error) {
			return postgres.Open(context.Background(), url, postgres.Options{Schema: schema})
		}
	}
	addr := freeAddr(t)
	base := "http://" + addr

	// The outside world, which survives the crashes and counts.
	fake := &payments.Fake{PendingDelay: 300 * time.Millisecond, Hang: 10 * time.Second}
	provider := payments.NewServer(fake, base+"/v1/payments/prov/callback", "whsec")
	provider.RetryFor = 5 * time.Minute
	provSrv := httptest.NewServer(provider)
	defer provSrv.Close()
	defer provider.Close()
	smtp, err := smtptest.Start("127.0.0.1:0", "allot", "mailpw")
	if err != nil {
		t.Fatal(err)
	}
	defer smtp.Close()
	var sellerMu sync.Mutex
	sellerCalls := map[string]int{}
	seller := httptest.NewServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		var req allot.SellerRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.Header.Get("Authorization") != "Bearer sellertok" {
			w.WriteHeader(400)
			return
		}
		sellerMu.Lock()
		sellerCalls[req.Order.ID]++
		sellerMu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if strings.HasPrefix(req.Order.CustomerID, "rej") {
			fmt.Fprint(w, `{"decision":"rejected","reason":"no rooms at the property"}`)
			return
		}
		fmt.Fprintf(w, `{"decision":"accepted","reference":"BK-%s"}`, req.Order.ID)
	}))
	defer seller.Close()

	args := []string{"serve", "--addr", addr, "--db", dbURL, "--log-level", "warn",
		"--payment-default", "prov", "--payment-webhook", "prov=" + provSrv.URL, "--payment-secret", "prov=whsec",
		"--seller", seller.URL, "--seller-token", "sellertok",
		"--smtp-addr", smtp.Addr(), "--smtp-user", "allot", "--smtp-password", "mailpw", "--smtp-from", "bookings@example.com",
		"--step-timeout", "2s", "--step-rescue-after", "3s", "--step-attempts", "100"}
	var all []*child
	start := func() *child {
		c := &child{logs: &bytes.Buffer{}}
		c.cmd = exec.Command(os.Args[0], args...)
		c.cmd.Env = append(os.Environ(), "ALLOT_RUN_MAIN=1")
		c.cmd.Stderr = c.logs
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		all = append(all, c)
		deadline := time.Now().Add(30 * time.Second)
		for {
			res, err := nethttp.Get(base + "/healthz")
			if err == nil {
				res.Body.Close()
				return c
			}
			if time.Now().After(deadline) {
				t.Fatalf("allot did not come up: %v\n%s", err, c.logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	defer func() {
		for _, c := range all {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
		if t.Failed() {
			for i, c := range all {
				t.Logf("child %d logs:\n%s", i, tail(c.logs.String(), 4000))
			}
		}
	}()
	cur := start()

	client := &nethttp.Client{Timeout: 5 * time.Second}
	// call sends one request until it gets an answer that is not a
	// connection failure or a 5xx (the server may be dead or restarting),
	// with one Idempotency-Key, so it takes effect once.
	call := func(method, path, body string, deadline time.Time) (int, []byte) {
		key := newKey()
		for {
			req, _ := nethttp.NewRequest(method, base+path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", key)
			res, err := client.Do(req)
			if err == nil {
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode < 500 && res.StatusCode != 409 || res.StatusCode == 409 && !bytes.Contains(b, []byte("in-flight")) {
					return res.StatusCode, b
				}
			}
			if time.Now().After(deadline) {
				t.Errorf("%s %s: no answer before the deadline (last error %v)", method, path, err)
				return 0, nil
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	far := time.Now().Add(3 * time.Minute)
	resources := []string{"r1", "r2", "r3"}
	for _, r := range resources {
		if st, b := call("POST", "/v1/resources", fmt.Sprintf(`{"id":%q,"name":%q,"kind":"stock","capacity":100000,"price":{"amount":"40.00","currency":"EUR"}}`, r, r), far); st != 201 {
			t.Fatalf("resource %s: %d %s", r, st, b)
		}
	}
	customers := []string{"ana", "ben", "cho", "rej1"}
	for _, c := range customers {
		if st, b := call("POST", "/v1/customers", fmt.Sprintf(`{"id":%q,"email":"%s@example.com"}`, c, c), far); st != 201 {
			t.Fatalf("customer %s: %d %s", c, st, b)
		}
	}

	type placed struct {
		id, simulate, customer, resource string
		quantity                         int
		cancelled                        bool
	}
	var mu sync.Mutex
	var orders []placed
	stop := make(chan struct{})
	var load sync.WaitGroup
	for w := range 6 {
		load.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			sims := []string{"", "", "", "", "decline", "fail_once", "timeout", "pending"}
			for {
				select {
				case <-stop:
					return
				default:
				}
				p := placed{simulate: sims[rng.IntN(len(sims))], customer: customers[rng.IntN(len(customers))],
					resource: resources[rng.IntN(len(resources))], quantity: 1 + rng.IntN(3)}
				body := fmt.Sprintf(`{"customer_id":%q,"lines":[{"resource_id":%q,"quantity":%d}],"payment":{"provider":"prov","simulate":%q}}`,
					p.customer, p.resource, p.quantity, p.simulate)
				st, b := call("POST", "/v1/orders", body, far)
				if st != 201 {
					t.Errorf("order: %d %s", st, b)
					return
				}
				var o allot.Order
				if err := json.Unmarshal(b, &o); err != nil {
					t.Error(err)
					return
				}
				p.id = o.ID
				if rng.IntN(4) == 0 {
					time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
					st, b := call("POST", "/v1/orders/"+o.ID+"/cancel", `{"reason":"changed plans"}`, far)
					switch st {
					case 200:
						p.cancelled = true
					case 409: // already ended (declined, rejected)
					default:
						t.Errorf("cancel: %d %s", st, b)
					}
				}
				mu.Lock()
				orders = append(orders, p)
				mu.Unlock()
				time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
			}
		})
	}
	for range 4 {
		time.Sleep(time.Duration(700+mrand.IntN(1500)) * time.Millisecond)
		if err := cur.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cur.cmd.Wait()
		cur = start()
	}
	// Enough orders that every end is reached, however slow the machine.
	for enough := time.Now().Add(90 * time.Second); time.Now().Before(enough); time.Sleep(100 * time.Millisecond) {
		mu.Lock()
		n := len(orders)
		mu.Unlock()
		if n >= 150 {
			break
		}
	}
	close(stop)
	load.Wait()
	if t.Failed() {
		return
	}

	// Drain: every order must reach a final state.
	final := map[allot.OrderStatus]bool{allot.OrderNotified: true, allot.OrderPaymentFailed: true,
		allot.OrderRejected: true, allot.OrderCancelled: true, allot.OrderExpired: true}
	got := map[string]allot.Order{}
	deadline := time.Now().Add(2 * time.Minute)
	for _, p := range orders {
		for {
			st, b := call("GET", "/v1/orders/"+p.id, "", deadline)
			if st != 200 {
				t.Fatalf("order %s: %d %s", p.id, st, b)
			}
			var o allot.Order
			if err := json.Unmarshal(b, &o); err != nil {
				t.Fatal(err)
			}
			if final[o.Status] {
				got[p.id] = o
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("order %s (%+v) is still %s after the drain; history %+v", p.id, p, o.Status, o.History)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	time.Sleep(time.Second) // let late refunds and callbacks land
	cur.cmd.Process.Signal(syscall.SIGTERM)
	cur.cmd.Wait()

	// Capacity: what is booked is exactly what the live orders hold.
	s, err := openStore()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	live := map[string]int{}
	n := 0
	for after := ""; ; {
		os, err := s.ListOrders(ctx, allot.OrderFilter{AfterID: after, Limit: 200})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range os {
			n++
			if o.Status.Live() {
				for _, l := range o.Lines {
					live[l.ResourceID] += l.Quantity
				}
			}
		}
		if len(os) < 200 {
			break
		}
		after = os[len(os)-1].ID
	}
	if n != len(orders) {
		t.Errorf("%d orders stored for %d acknowledged creations", n, len(orders))
	}
	for _, r := range resources {
		bs, err := s.Buckets(ctx, r, "", "")
		if err != nil {
			t.Fatal(err)
		}
		if len(bs) != 1 || bs[0].Booked != live[r] || bs[0].Held != 0 {
			t.Errorf("resource %s: buckets %+v, live orders book %d", r, bs, live[r])
		}
	}
	a, err := engine.Check(ctx, s, resources...)
	if err != nil || len(a.Violations) > 0 {
		t.Errorf("audit: %v %v", err, a.Violations)
	}

	// Effects: each at most once, and consistent with the end state.
	emails := smtp.CountByMessageID()
	counts := map[allot.OrderStatus]int{}
	dupMail := 0
	for _, p := range orders {
		o := got[p.id]
		counts[o.Status]++
		c, r := fake.Captures(o.ID), fake.Refunds(o.ID)
		m := emails[notify.MessageID("confirmed-"+o.ID)]
		if m > 1 {
			dupMail += m - 1
		}
		if c > 1 || r > 1 {
			t.Errorf("order %s: %d captures, %d refunds", o.ID, c, r)
		}
		switch o.Status {
		case allot.OrderNotified:
			if c != 1 || r != 0 || m < 1 {
				t.Errorf("notified order %s: %d captures, %d refunds, %d emails", o.ID, c, r, m)
			}
		case allot.OrderPaymentFailed:
			if c != 0 || p.simulate != "decline" {
				t.Errorf("failed order %s (simulate %q): %d captures", o.ID, p.simulate, c)
			}
		default: // cancelled, rejected, expired: every capture given back
			if c != r {
				t.Errorf("%s order %s: %d captures, %d refunds", o.Status, o.ID, c, r)
			}
			if o.Status == allot.OrderRejected && !strings.HasPrefix(p.customer, "rej") {
				t.Errorf("order %s of %s rejected: %+v", o.ID, p.customer, o.History)
			}
		}
		// A confirmation goes only to a confirmed order (it may be
		// cancelled while the message is on its way).
		if m > 0 && !historyHas(o, allot.OrderConfirmed) {
			t.Errorf("order %s (%s) was never confirmed but got %d emails", o.ID, o.Status, m)
		}
	}
	// SMTP cannot be asked "did you already take this one?": a crash
	// between the server accepting a message and the order recording it
	// resends the same message (same Message-ID), which receivers drop.
	t.Logf("%d orders, %d kills: %v; %d resent emails (same Message-ID), %d seller calls", len(orders), 4, counts, dupMail, len(sellerCalls))
	// Only a message in flight when a process died can be resent: at most
	// one per running notify step (20 workers) per kill.
	if dupMail > 4*20 {
		t.Errorf("%d e-mails resent over 4 kills", dupMail)
	}
	if counts[allot.OrderNotified] == 0 || counts[allot.OrderPaymentFailed] == 0 || counts[allot.OrderCancelled] == 0 {
		t.Errorf("the load did not reach every end: %v", counts)
	}
}

func historyHas(o allot.Order, s allot.OrderStatus) bool {
	for _, t := range o.History {
		if t.To == s {
			return true
		}
	}
	return false
}

func newKey() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
