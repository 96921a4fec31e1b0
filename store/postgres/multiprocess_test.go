package postgres_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/store/postgres"
	"github.com/allot/allot/store/postgres/pgtest"
	"github.com/allot/allot/store/storetest"
)

// TestMain lets the test binary act as a second allot process: with
// ALLOT_CHILD_SCHEMA set it hammers that schema and prints what it won.
func TestMain(m *testing.M) {
	if schema := os.Getenv("ALLOT_CHILD_SCHEMA"); schema != "" {
		os.Exit(child(schema))
	}
	os.Exit(m.Run())
}

const (
	childWorkers  = 8
	childAttempts = 10 // per worker
)

func child(schema string) int {
	ctx := context.Background()
	s, err := postgres.Open(ctx, os.Getenv("ALLOT_CHILD_URL"), postgres.Options{Schema: schema})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	// The production default on PostgreSQL: batched, four workers.
	eng := engine.New(s, engine.Options{Batching: engine.Batching{Workers: 4}})
	defer eng.Close()
	var won, failed atomic.Int32
	var wg sync.WaitGroup
	for w := range childWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range childAttempts {
				lines := []allot.Line{{ResourceID: "hot", Quantity: 1}}
				if i%2 == 1 { // also race overlapping stays on one room
					in, out := allot.MustDate("2037-10-01").AddDays((w+i)%4), allot.MustDate("2037-10-03").AddDays((w+i)%4)
					lines = append(lines, allot.Line{ResourceID: "room", Quantity: 1, CheckIn: &in, CheckOut: &out})
				}
				_, err := eng.CreateOrder(ctx, engine.OrderInput{Lines: lines})
				switch allot.CodeOf(err) {
				case "":
					if err != nil {
						fmt.Fprintln(os.Stderr, err)
						failed.Add(1)
						continue
					}
					won.Add(1)
				case allot.CodeInsufficientCapacity:
				default:
					fmt.Fprintln(os.Stderr, err)
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Println(won.Load())
	if failed.Load() > 0 {
		return 1
	}
	return 0
}

// TestTwoProcesses runs two allot processes on one database, racing for the
// same stock and the same room: together they never oversell.
func TestTwoProcesses(t *testing.T) {
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	ctx := context.Background()
	s, err := postgres.Open(ctx, url, postgres.Options{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	eng := engine.New(s, engine.Options{})
	capacity := 2 * childWorkers * childAttempts / 3 // fewer units than attempts
	for _, in := range []engine.ResourceInput{
		{ID: "hot", Name: "hot", Kind: allot.KindStock, Capacity: &capacity},
		{ID: "room", Name: "room", Kind: allot.KindNightly, Capacity: new(int)},
	} {
		if _, err := eng.CreateResource(ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	from, to := allot.MustDate("2037-10-01"), allot.MustDate("2037-10-10")
	one := 1
	if _, err := eng.SetCapacity(ctx, "room", engine.CapacityInput{From: &from, To: &to, Capacity: &one}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	won := make([]int, 2)
	for i := range won {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "ALLOT_CHILD_SCHEMA="+schema, "ALLOT_CHILD_URL="+url)
			out, err := cmd.Output()
			if err != nil {
				t.Errorf("child %d: %v: %s", i, err, err.(*exec.ExitError).Stderr)
				return
			}
			won[i], _ = strconv.Atoi(strings.TrimSpace(string(out)))
		}()
	}
	wg.Wait()
	orders, err := s.ListOrders(ctx, allot.OrderFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if won[0]+won[1] != len(orders) || len(orders) > capacity || len(orders) == 0 {
		t.Fatalf("processes won %v, %d orders stored, capacity %d", won, len(orders), capacity)
	}
	b, err := s.Buckets(ctx, "hot", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if b[0].Booked != len(orders) {
		t.Fatalf("hot bucket booked %d, orders %d", b[0].Booked, len(orders))
	}
	t.Logf("two processes booked %d of %d units (%v)", len(orders), capacity, won)
	storetest.CheckInvariants(t, ctx, s, "hot", "room")
}
