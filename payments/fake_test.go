package payments

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
)

var eur120 = allot.Money{Minor: 12000, Scale: 2, Currency: "EUR"}

func chargeReq(key, order, sim string) allot.PaymentRequest {
	return allot.PaymentRequest{Key: key, OrderID: order, Amount: eur120, Simulate: sim}
}

func refundReq(key, chargeKey, order string) allot.PaymentRequest {
	return allot.PaymentRequest{Key: key, ChargeKey: chargeKey, OrderID: order, Amount: eur120}
}

// outcome is one call's answer, reduced to what the tests compare.
type outcome struct {
	status    allot.PaymentStatus
	transient bool // a plain error
	permanent bool // an error wrapping ErrPermanent
}

func outcomeOf(res allot.PaymentResult, err error) outcome {
	switch {
	case errors.Is(err, allot.ErrPermanent):
		return outcome{permanent: true}
	case err != nil:
		return outcome{transient: true}
	}
	return outcome{status: res.Status}
}

var (
	succeeded = outcome{status: allot.PaymentSucceeded}
	declined  = outcome{status: allot.PaymentDeclined}
	pending   = outcome{status: allot.PaymentPending}
	nothing   = outcome{status: allot.PaymentNothingToRefund}
	transient = outcome{transient: true}
	permanent = outcome{permanent: true}
)

func runSimulateModes(t *testing.T, newPayer func(t *testing.T, f *Fake) allot.Payments) {
	tests := []struct {
		sim           string
		first, second outcome
		captures      int
	}{
		{"", succeeded, succeeded, 1},
		{"succeed", succeeded, succeeded, 1},
		{"decline", declined, declined, 0},
		{"fail_once", transient, succeeded, 1},
		{"timeout", transient, succeeded, 1},
		{"pending", pending, pending, 0}, // PendingDelay is long here: it never settles
		{"explode", permanent, permanent, 0},
	}
	for _, tc := range tests {
		t.Run("simulate="+tc.sim, func(t *testing.T) {
			f := &Fake{PendingDelay: time.Hour, Hang: time.Hour}
			p := newPayer(t, f)
			r := chargeReq("key-1", "ord-1", tc.sim)
			// Only "timeout" should use up its context; the others answer at once.
			wait := 10 * time.Second
			if tc.sim == "timeout" {
				wait = 300 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			res1, err1 := p.Charge(ctx, r)
			if got := outcomeOf(res1, err1); got != tc.first {
				t.Fatalf("first charge: got %+v (%+v, %v), want %+v", got, res1, err1, tc.first)
			}
			ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel2()
			res2, err2 := p.Charge(ctx2, r)
			if got := outcomeOf(res2, err2); got != tc.second {
				t.Fatalf("second charge: got %+v (%+v, %v), want %+v", got, res2, err2, tc.second)
			}
			if n := f.Captures("ord-1"); n != tc.captures {
				t.Errorf("captures = %d, want %d", n, tc.captures)
			}
			if n := f.Calls(); n != 2 {
				t.Errorf("calls = %d, want 2", n)
			}
			if err1 == nil && res1 != res2 {
				t.Errorf("a repeated charge answered %+v, the first %+v", res2, res1)
			}
			if res2.Status == allot.PaymentSucceeded && !strings.HasPrefix(res2.PaymentID, "pay_") {
				t.Errorf("payment id %q, want pay_…", res2.PaymentID)
			}
			if tc.sim == "decline" && res1.Reason != "card declined (simulated)" {
				t.Errorf("decline reason %q", res1.Reason)
			}
			if tc.sim == "explode" && !strings.Contains(err1.Error(), "fail_once") {
				t.Errorf("the error should name the allowed values: %v", err1)
			}
		})
	}
}

func TestFakeSimulateModes(t *testing.T) {
	runSimulateModes(t, func(_ *testing.T, f *Fake) allot.Payments { return f })
}

func TestFakeTimeoutHangsUntilHangWithoutDeadline(t *testing.T) {
	f := &Fake{Hang: 10 * time.Millisecond}
	_, err := f.Charge(context.Background(), chargeReq("k", "o", "timeout"))
	if err == nil || errors.Is(err, allot.ErrPermanent) {
		t.Fatalf("got %v, want a transient error", err)
	}
	// The capture happened; only the answer was lost.
	if n := f.Captures("o"); n != 1 {
		t.Fatalf("captures = %d, want 1", n)
	}
}

func TestFakePendingSettles(t *testing.T) {
	got := make(chan allot.PaymentResult, 1)
	var gotReq allot.PaymentRequest
	f := &Fake{OnPending: func(r allot.PaymentRequest, res allot.PaymentResult) { gotReq = r; got <- res }}
	r := chargeReq("k", "o", "pending")
	first, err := f.Charge(context.Background(), r)
	if err != nil || first.Status != allot.PaymentPending || first.PaymentID == "" {
		t.Fatalf("got %+v, %v; want pending with a payment id", first, err)
	}
	var final allot.PaymentResult
	select {
	case final = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("OnPending was not called")
	}
	if final.Status != allot.PaymentSucceeded || final.PaymentID != first.PaymentID || gotReq != r {
		t.Fatalf("OnPending got %+v for %+v; want succeeded %s for %+v", final, gotReq, first.PaymentID, r)
	}
	again, err := f.Charge(context.Background(), r)
	if err != nil || again != final {
		t.Fatalf("a charge after settling answered %+v, %v; want %+v", again, err, final)
	}
	if n := f.Captures("o"); n != 1 {
		t.Fatalf("captures = %d, want 1", n)
	}
}

func TestFakeConcurrentChargesCaptureOnce(t *testing.T) {
	for _, sim := range []string{"", "fail_once", "pending"} {
		t.Run("simulate="+sim, func(t *testing.T) {
			f := &Fake{PendingDelay: time.Hour}
			const n = 50
			var wg sync.WaitGroup
			results := make([]allot.PaymentResult, n)
			errs := make([]error, n)
			for i := range n {
				wg.Go(func() { results[i], errs[i] = f.Charge(context.Background(), chargeReq("same", "o", sim)) })
			}
			wg.Wait()
			ids, failed := map[string]bool{}, 0
			for i := range n {
				if errs[i] != nil {
					failed++
					continue
				}
				ids[results[i].PaymentID] = true
			}
			wantFailed, wantCaptures := 0, 1
			if sim == "fail_once" {
				wantFailed = 1
			}
			if sim == "pending" {
				wantCaptures = 0
			}
			if failed != wantFailed || len(ids) != 1 {
				t.Fatalf("%d failed (want %d), %d distinct payment ids (want 1)", failed, wantFailed, len(ids))
			}
			if c := f.Captures("o"); c != wantCaptures {
				t.Fatalf("captures = %d, want %d", c, wantCaptures)
			}
			if c := f.Calls(); c != n {
				t.Fatalf("calls = %d, want %d", c, n)
			}
		})
	}
}

func TestFakeKeyReusedForAnotherOrder(t *testing.T) {
	f := &Fake{}
	if _, err := f.Charge(context.Background(), chargeReq("k", "o1", "")); err != nil {
		t.Fatal(err)
	}
	_, err := f.Charge(context.Background(), chargeReq("k", "o2", ""))
	if !errors.Is(err, allot.ErrPermanent) {
		t.Fatalf("got %v, want ErrPermanent", err)
	}
	if f.Captures("o2") != 0 {
		t.Fatal("a reused key captured")
	}
	_, err = f.Charge(context.Background(), allot.PaymentRequest{OrderID: "o3", Amount: eur120})
	if !errors.Is(err, allot.ErrPermanent) {
		t.Fatalf("a charge without a key: got %v, want ErrPermanent", err)
	}
}

func TestFakeRefunds(t *testing.T) {
	type call struct {
		refund    bool
		key       string // refund key, or charge key
		chargeKey string
		sim       string
		want      outcome
	}
	charge := func(key, sim string, want outcome) call { return call{key: key, sim: sim, want: want} }
	refund := func(key, chargeKey string, want outcome) call {
		return call{refund: true, key: key, chargeKey: chargeKey, want: want}
	}
	tests := []struct {
		name              string
		calls             []call
		captures, refunds int
	}{
		{"refund once, repeat answers the same", []call{
			charge("c", "", succeeded), refund("r", "c", succeeded), refund("r", "c", succeeded)}, 1, 1},
		{"second refund key finds nothing", []call{
			charge("c", "", succeeded), refund("r1", "c", succeeded), refund("r2", "c", nothing), refund("r1", "c", succeeded)}, 1, 1},
		{"no charge", []call{refund("r", "c", nothing), refund("r", "c", nothing)}, 0, 0},
		{"declined charge", []call{charge("c", "decline", declined), refund("r", "c", nothing)}, 0, 0},
		{"charge failed before any effect", []call{charge("c", "fail_once", transient), refund("r", "c", nothing)}, 0, 0},
		{"refund before the charge, then after", []call{
			refund("r", "c", nothing), charge("c", "", succeeded), refund("r", "c", succeeded)}, 1, 1},
		{"a refund voids a pending charge", []call{charge("c", "pending", pending), refund("r", "c", nothing), charge("c", "pending", declined)}, 0, 0},
		{"refund without a charge key", []call{refund("r", "", permanent)}, 0, 0},
		{"refund fail_once", []call{
			charge("c", "", succeeded), {refund: true, key: "r", chargeKey: "c", sim: "fail_once", want: transient},
			{refund: true, key: "r", chargeKey: "c", sim: "fail_once", want: succeeded}}, 1, 1},
		{"refund timeout refunds, the retry answers", []call{
			charge("c", "", succeeded), {refund: true, key: "r", chargeKey: "c", sim: "timeout", want: transient},
			{refund: true, key: "r", chargeKey: "c", sim: "timeout", want: succeeded}}, 1, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &Fake{PendingDelay: time.Hour, Hang: time.Millisecond}
			var refundID string
			for i, c := range tc.calls {
				var res allot.PaymentResult
				var err error
				if c.refund {
					r := refundReq(c.key, c.chargeKey, "o")
					r.Simulate = c.sim
					res, err = f.Refund(context.Background(), r)
				} else {
					res, err = f.Charge(context.Background(), chargeReq(c.key, "o", c.sim))
				}
				if got := outcomeOf(res, err); got != c.want {
					t.Fatalf("call %d: got %+v (%+v, %v), want %+v", i, got, res, err, c.want)
				}
				if c.refund && res.Status == allot.PaymentSucceeded {
					if refundID != "" && res.PaymentID != refundID {
						t.Fatalf("call %d: refund id %s, earlier %s", i, res.PaymentID, refundID)
					}
					refundID = res.PaymentID
				}
			}
			if n := f.Captures("o"); n != tc.captures {
				t.Errorf("captures = %d, want %d", n, tc.captures)
			}
			if n := f.Refunds("o"); n != tc.refunds {
				t.Errorf("refunds = %d, want %d", n, tc.refunds)
			}
		})
	}
}

func TestFakeConcurrentRefundsRefundOnce(t *testing.T) {
	f := &Fake{}
	if _, err := f.Charge(context.Background(), chargeReq("c", "o", "")); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wg sync.WaitGroup
	statuses := make([]allot.PaymentStatus, n)
	for i := range n {
		// Half share a key, half use their own: still one refund in all.
		key := "r-shared"
		if i%2 == 1 {
			key = fmt.Sprintf("r-%d", i)
		}
		wg.Go(func() {
			res, err := f.Refund(context.Background(), refundReq(key, "c", "o"))
			if err != nil {
				t.Error(err)
			}
			statuses[i] = res.Status
		})
	}
	wg.Wait()
	if got := f.Refunds("o"); got != 1 {
		t.Fatalf("refunds = %d, want 1", got)
	}
	ok := 0
	for _, s := range statuses {
		if s == allot.PaymentSucceeded {
			ok++
		}
	}
	// Either the shared key won (25 succeeded answers) or one own key did (1).
	if ok != 1 && ok != n/2 {
		t.Fatalf("%d refunds answered succeeded, want 1 or %d", ok, n/2)
	}
	if got := f.totals(); got.Captures != 1 || got.Refunds != 1 || got.Calls != n+1 || got.MaxCaptures != 1 || got.MaxRefunds != 1 {
		t.Fatalf("totals %+v", got)
	}
}
