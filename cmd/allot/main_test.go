package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/allot/allot/store/sqlite"
)

// TestMain lets the test binary run as allot itself, for the tests that
// need a real process to signal.
func TestMain(m *testing.M) {
	if os.Getenv("ALLOT_RUN_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestServeAndShutdown starts allot serve on a fresh SQLite file, books
// through the API, stops it with SIGTERM and checks that it exits cleanly
// and the acknowledged booking is in the file.
func TestServeAndShutdown(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	cmd := exec.Command(os.Args[0], "serve", "--addr", addr)
	cmd.Dir = dir // the default database lands in ./allot-data
	cmd.Env = append(os.Environ(), "ALLOT_RUN_MAIN=1", "ALLOT_DB=", "GOGC=")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	base := "http://" + addr
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := nethttp.Get(base + "/healthz")
		if err == nil {
			res.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("allot did not come up: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	post := func(path, body string) int {
		res, err := nethttp.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if st := post("/v1/resources", `{"id":"tix","name":"Tickets","kind":"stock","capacity":5}`); st != 201 {
		t.Fatalf("create resource: %d", st)
	}
	if st := post("/v1/orders", `{"lines":[{"resource_id":"tix","quantity":2}]}`); st != 201 {
		t.Fatalf("order: %d", st)
	}
	if st := post("/v1/resources", `{"id":"busy","name":"Busy","kind":"stock","capacity":100000}`); st != 201 {
		t.Fatalf("create resource: %d", st)
	}
	// Clients keep booking while the server is told to stop: every order
	// it acknowledged must be on disk, and none it did not.
	var acked atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	client := &nethttp.Client{Timeout: 10 * time.Second}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := client.Post(base+"/v1/orders", "application/json", strings.NewReader(`{"lines":[{"resource_id":"busy","quantity":1}]}`))
				if err != nil {
					return // the server has stopped listening
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode == 201 {
					acked.Add(1)
				}
			}
		}()
	}
	// A client watching the event stream must not hold the shutdown up.
	stream, err := nethttp.Get(base + "/v1/events/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	time.Sleep(300 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("allot exited with %v\n%s", err, logs.String())
	}
	if d := time.Since(stopped); d > 10*time.Second {
		t.Fatalf("shutting down took %s: something held it up", d)
	}
	close(stop)
	wg.Wait()
	if acked.Load() == 0 {
		t.Fatal("no order was acknowledged before the shutdown")
	}
	for _, want := range []string{`"msg":"allot serving"`, `"msg":"stopped"`, `"gc_percent":400`} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("logs lack %s:\n%s", want, logs.String())
		}
	}
	s, err := sqlite.Open(context.Background(), filepath.Join(dir, "allot-data", "allot.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, err := s.Buckets(context.Background(), "tix", "", "")
	if err != nil || len(b) != 1 || b[0].Booked != 2 {
		t.Fatalf("after restart: %+v, %v", b, err)
	}
	b, err = s.Buckets(context.Background(), "busy", "", "")
	if err != nil || len(b) != 1 || int64(b[0].Booked) != acked.Load() {
		t.Fatalf("%d orders acknowledged during shutdown, %+v on disk (%v)", acked.Load(), b, err)
	}
	t.Logf("%d orders acknowledged while shutting down, all on disk", acked.Load())
}

func TestServeGCPercent(t *testing.T) {
	for _, tc := range []struct {
		gogc string
		want int
		set  bool
	}{
		{"", defaultGCPercent, true},
		{"100", 0, false},
		{"off", 0, false},
	} {
		got, set := serveGCPercent(tc.gogc)
		if got != tc.want || set != tc.set {
			t.Errorf("serveGCPercent(%q) = %d, %v; want %d, %v", tc.gogc, got, set, tc.want, tc.set)
		}
	}
}

// Boolean environment variables take what strconv.ParseBool takes, and
// refuse anything else: ALLOT_WORKFLOW=TRUE used to turn the workflow off.
func TestEnvBools(t *testing.T) {
	cases := []struct {
		name, value string
		want        bool
	}{
		{"ALLOT_WORKFLOW", "TRUE", true}, {"ALLOT_WORKFLOW", "1", true}, {"ALLOT_WORKFLOW", "false", false},
		{"ALLOT_OPENACTIVE", "1", true}, {"ALLOT_OPENACTIVE", "", false},
	}
	for _, c := range cases {
		t.Setenv(c.name, c.value)
		def := c.name == "ALLOT_WORKFLOW"
		if got := envBool(c.name, def); got != c.want || checkEnvBools() != nil {
			t.Errorf("%s=%q: %v (%v), want %v", c.name, c.value, got, checkEnvBools(), c.want)
		}
	}
	t.Setenv("ALLOT_WORKFLOW", "yes please")
	var out bytes.Buffer
	if code := run([]string{"serve"}, &out); code != 2 || !strings.Contains(out.String(), "ALLOT_WORKFLOW") {
		t.Fatalf("exit %d: %s", code, out.String())
	}
}

func TestCommands(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		code int
		out  string
	}{
		{nil, 2, "Usage"},
		{[]string{"help"}, 0, "allot serve"},
		{[]string{"fly"}, 2, `unknown command "fly"`},
		{[]string{"serve", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"migrate", "--db", "mysql://x"}, 1, "unsupported database URL"},
		{[]string{"migrate", "--db", "sqlite:"}, 1, "names no file"},
		{[]string{"migrate", "--log-level", "loud"}, 2, "--log-level"},
		{[]string{"serve", "--kafka-consume-create-booking", "g"}, 2, "needs --kafka-brokers"},
		{[]string{"serve", "--kafka-brokers", "127.0.0.1:1", "--kafka-consume-create-booking", "g"}, 2, "add --workflow=false"},
		{[]string{"migrate", "--db", "sqlite:" + filepath.Join(dir, "m.db")}, 0, "schema migrated"},
		{[]string{"migrate", "--db", "postgres://u:pw-4711@127.0.0.1:1/x?connect_timeout=1"}, 1, "xxxxx"},
		{[]string{"serve", "--seller", "bogus"}, 2, "--seller must be auto, manual or an http(s) URL"},
		{[]string{"serve", "--seller", "manual"}, 2, "needs --seller-token"},
		{[]string{"serve", "--payment-webhook", "acme=http://127.0.0.1:1"}, 2, "needs --payment-secret acme=SECRET"},
		{[]string{"serve", "--payment-webhook", "acme"}, 2, "want NAME=VALUE"},
		{[]string{"serve", "--payment-default", "paypal"}, 2, "not a configured provider"},
		{[]string{"serve", "--step-timeout", "2m"}, 2, "--step-rescue-after must exceed --step-timeout"},
		{[]string{"fake-provider", "--callback", "http://127.0.0.1:1/cb"}, 2, "--callback needs --secret"},
		{[]string{"fake-provider", "--callback", "ftp://x", "--secret", "s"}, 2, "must be an http(s) URL"},
		{[]string{"fake-provider", "--pending-delay", "-5s"}, 2, "may not be negative"},
		{[]string{"fake-provider", "extra"}, 2, "unexpected arguments"},
		{[]string{"bench", "--db", "sqlite", "--engine", "foo"}, 2, "--engine must be batch or naive"},
		{[]string{"bench", "--target", "http://127.0.0.1:1", "--keep"}, 2, "are for the servers --db starts"},
		{[]string{"bench", "--target", "http://127.0.0.1:1", "--workload", "party"}, 2, "--workload must be"},
		{[]string{"bench", "--target", "http://127.0.0.1:1", "extra"}, 2, "unexpected arguments"},
		{[]string{"serve", "--openactive-partner", "my.app=k"}, 2, "a partner's name is 1-64"},
		{[]string{"serve", "--openactive", "--openactive-base-url", "booking.example.com"}, 2, "must be an http(s) URL"},
		{[]string{"serve", "--openactive", "--openactive-partner", "a=k", "--openactive-partner", "b=k"}, 2, `"a" and "b" have the same key`},
		{[]string{"serve", "--openactive", "--openactive-partner", "a=k", "--openactive-partner", "a=j"}, 2, `"a" given twice`},
		{[]string{"serve", "--openactive-partner", "a=k"}, 2, "are for --openactive"},
		{[]string{"serve", "--batch-max", "1000000000"}, 2, "--batch-max within 1..10000"},
		{[]string{"serve", "--batch-workers", "-3"}, 2, "--batch-workers must be within 0..64"},
		{[]string{"serve", "--engine", "naive", "--batch-max", "5"}, 2, "are for --engine batch"},
		{[]string{"serve", "--payment-timeout", "-5s"}, 2, "--payment-timeout must be positive"},
		{[]string{"serve", "--addr", "8080"}, 2, "--addr \"8080\" must be HOST:PORT"},
		{[]string{"serve", "--public-url", "book.example.com"}, 2, "--public-url \"book.example.com\" must be an http(s) URL"},
		{[]string{"serve", "--step-timeout", "0"}, 2, "--step-timeout must be positive"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.args), func(t *testing.T) {
			var out bytes.Buffer
			if code := run(c.args, &out); code != c.code || !strings.Contains(out.String(), c.out) {
				t.Fatalf("exit %d, want %d; output lacks %q:\n%s", code, c.code, c.out, out.String())
			}
			if strings.Contains(out.String(), "pw-4711") {
				t.Fatalf("a password reached the logs:\n%s", out.String())
			}
		})
	}
}
