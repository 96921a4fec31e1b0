package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/allot/allot/bench/pgbench"
)

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

// signalContext ends on SIGINT or SIGTERM, so an interrupted bench still
// stops its servers.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

var tpsLine = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// pgbenchRun measures the raw-SQL ceiling of a workload with pgbench at
// the same client count, when pgbench is installed.
func pgbenchRun(ctx context.Context, stderr io.Writer, db, workload string, clients int, d time.Duration) benchRun {
	run := benchRun{Name: "pgbench " + workload}
	script := map[string]string{"hot": pgbench.Hot, "hotel": pgbench.Hotel}[workload]
	if script == "" {
		run.Note = "no pgbench ceiling for this workload"
		return run
	}
	bin, err := exec.LookPath("pgbench")
	if err != nil {
		run.Note = "pgbench is not installed (apt-get install postgresql-client)"
		return run
	}
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		run.Note = err.Error()
		return run
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, pgbench.Setup); err != nil {
		run.Note = "setup: " + err.Error()
		return run
	}
	defer conn.Exec(context.Background(), pgbench.Teardown)
	f, err := os.CreateTemp("", "allot-pgbench-*.sql")
	if err != nil {
		run.Note = err.Error()
		return run
	}
	defer os.Remove(f.Name())
	f.WriteString(script)
	f.Close()
	fmt.Fprintf(stderr, "pgbench %s ceiling, %d clients, %s\n", workload, clients, d)
	out, err := exec.CommandContext(ctx, bin, "-n", "-c", strconv.Itoa(clients), "-j", "2", "-T", strconv.Itoa(max(1, int(d.Seconds()))), "-f", f.Name(), db).CombinedOutput()
	m := tpsLine.FindSubmatch(out)
	if err != nil || m == nil {
		run.Note = fmt.Sprintf("pgbench failed: %v: %.300s", err, out)
		return run
	}
	run.PgbenchT, _ = strconv.ParseFloat(string(m[1]), 64)
	run.Note = "tps, same client count, synchronous_commit as configured on the server"
	return run
}
