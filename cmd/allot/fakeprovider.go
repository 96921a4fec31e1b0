package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/allot/allot/payments"
)

// runFakeProvider serves the fake payment provider over HTTP, as a
// webhook-style provider would: for trying the callback flow by hand.
func runFakeProvider(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("allot fake-provider", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8090", "listen address")
	callback := fs.String("callback", "", "where to post pending charges' outcomes, e.g. http://127.0.0.1:8080/v1/payments/acme/callback")
	secret := fs.String("secret", "", "the callback signing secret (the same as allot serve's --payment-secret)")
	delay := fs.Duration("pending-delay", 3*time.Second, "how long a pending charge stays pending")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "allot fake-provider: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *callback != "" && *secret == "" {
		fmt.Fprintln(stderr, "allot fake-provider: --callback needs --secret")
		return 2
	}
	if u, err := url.Parse(*callback); *callback != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "") {
		fmt.Fprintf(stderr, "allot fake-provider: --callback %q must be an http(s) URL\n", *callback)
		return 2
	}
	if *delay < 0 {
		fmt.Fprintln(stderr, "allot fake-provider: --pending-delay may not be negative")
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	srv := payments.NewServer(&payments.Fake{PendingDelay: *delay}, *callback, *secret)
	srv.Log = log
	defer srv.Close()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Error("listening", "err", err)
		return 1
	}
	hs := &nethttp.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); hs.Shutdown(context.Background()) }()
	log.Info("fake payment provider serving", "addr", ln.Addr().String(), "callback", *callback)
	if err := hs.Serve(ln); err != nil && !errors.Is(err, nethttp.ErrServerClosed) {
		log.Error("serving", "err", err)
		return 1
	}
	return 0
}
