package notify

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/notify/smtptest"
)

func startSMTP(t *testing.T, user, pass string) *smtptest.Server {
	t.Helper()
	s, err := smtptest.Start("127.0.0.1:0", user, pass)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestMessageID(t *testing.T) {
	tests := []struct{ key, want string }{
		{"notify:ord_01H", "<notify-ord_01H@allot>"},
		{"a.b-c_d", "<a.b-c_d@allot>"},
		{"a..b", "<a.-b@allot>"},
		{".a.", "<-a-@allot>"},
		{"<x@y> z", "<-x-y--z@allot>"},
		{"é", "<--@allot>"},
	}
	for _, tc := range tests {
		if got := MessageID(tc.key); got != tc.want {
			t.Errorf("MessageID(%q) = %q, want %q", tc.key, got, tc.want)
		}
		if _, err := mail.ParseAddress(strings.Trim(MessageID(tc.key), "<>")); err != nil {
			t.Errorf("MessageID(%q) is not a valid msg-id: %v", tc.key, err)
		}
	}
}

// body decodes a received message's body per its Content-Transfer-Encoding.
func body(t *testing.T, m *mail.Message) string {
	t.Helper()
	var r io.Reader = m.Body
	if m.Header.Get("Content-Transfer-Encoding") == "quoted-printable" {
		r = quotedprintable.NewReader(r)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSMTPDelivers(t *testing.T) {
	tests := []struct {
		name     string
		n        allot.Notification
		wantBody string // decoded, CRLF
		wantCTE  string
		wantTo   string // envelope
	}{
		{
			name:     "plain",
			n:        allot.Notification{Key: "notify:ord_1", OrderID: "ord_1", To: "guest@example.com", Subject: "Booking confirmed", Body: "Hello,\nyour booking is confirmed.\n"},
			wantBody: "Hello,\r\nyour booking is confirmed.\r\n", wantCTE: "7bit", wantTo: "guest@example.com",
		},
		{
			name:     "dot lines and mixed line endings",
			n:        allot.Notification{Key: "k2", To: "Guest <guest@example.com>", Subject: "Dots", Body: ".\n.leading dot\r\n..two\rbare CR"},
			wantBody: ".\r\n.leading dot\r\n..two\r\nbare CR\r\n", wantCTE: "7bit", wantTo: "guest@example.com",
		},
		{
			name:     "utf-8",
			n:        allot.Notification{Key: "k3", To: "Zoë <zoe@example.com>", Subject: "Réservation confirmée", Body: "Chère Zoë,\n.à bientôt\n"},
			wantBody: "Chère Zoë,\r\n.à bientôt\r\n", wantCTE: "quoted-printable", wantTo: "zoe@example.com",
		},
		{
			name:     "long line",
			n:        allot.Notification{Key: "k4", To: "g@example.com", Subject: strings.TrimSpace(strings.Repeat("long subject ", 20)), Body: strings.Repeat("x", 3000)},
			wantBody: strings.Repeat("x", 3000) + "\r\n", wantCTE: "quoted-printable", wantTo: "g@example.com",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := startSMTP(t, "allot", "secret")
			s := SMTP{Addr: srv.Addr(), Username: "allot", Password: "secret", From: "Allot <noreply@allot.example>"}
			if err := s.Notify(context.Background(), tc.n); err != nil {
				t.Fatal(err)
			}
			ms := srv.Messages()
			if len(ms) != 1 {
				t.Fatalf("%d messages", len(ms))
			}
			got := ms[0]
			if got.From != "noreply@allot.example" || len(got.To) != 1 || got.To[0] != tc.wantTo {
				t.Errorf("envelope %q -> %q", got.From, got.To)
			}
			if got.MessageID != MessageID(tc.n.Key) || got.Subject != tc.n.Subject {
				t.Errorf("Message-ID %q, Subject %q", got.MessageID, got.Subject)
			}
			for _, line := range bytes.Split(got.Data, []byte("\r\n")) {
				if len(line) > 998 {
					t.Errorf("line of %d octets", len(line))
				}
			}
			m, err := mail.ReadMessage(bytes.NewReader(got.Data))
			if err != nil {
				t.Fatal(err)
			}
			h := m.Header
			from, _ := mail.ParseAddress(h.Get("From"))
			to, _ := mail.ParseAddress(h.Get("To"))
			wantTo, _ := mail.ParseAddress(tc.n.To)
			if from == nil || from.Address != "noreply@allot.example" || from.Name != "Allot" || to == nil || *to != *wantTo {
				t.Errorf("From %q To %q", h.Get("From"), h.Get("To"))
			}
			if d, err := h.Date(); err != nil || time.Since(d) > time.Minute {
				t.Errorf("Date %q: %v", h.Get("Date"), err)
			}
			if h.Get("MIME-Version") != "1.0" || h.Get("Content-Type") != "text/plain; charset=utf-8" || h.Get("Content-Transfer-Encoding") != tc.wantCTE {
				t.Errorf("MIME headers %v", h)
			}
			if b := body(t, m); b != tc.wantBody {
				t.Errorf("body %q, want %q", b, tc.wantBody)
			}
		})
	}
}

func TestSMTPResendIsSameMessage(t *testing.T) {
	srv := startSMTP(t, "", "")
	s := SMTP{Addr: srv.Addr(), From: "noreply@allot.example"}
	n := allot.Notification{Key: "notify:ord_9", To: "g@example.com", Subject: "s", Body: "b"}
	for range 2 {
		if err := s.Notify(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	if got := srv.CountByMessageID(); len(got) != 1 || got[MessageID(n.Key)] != 2 {
		t.Fatalf("CountByMessageID = %v", got)
	}
}

func TestSMTPErrors(t *testing.T) {
	good := allot.Notification{Key: "k", OrderID: "o", To: "g@example.com", Subject: "s", Body: "b"}
	with := func(f func(*allot.Notification)) allot.Notification { n := good; f(&n); return n }

	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := down.Addr().String()
	down.Close()

	tests := []struct {
		name     string
		user     string // server username ("" for none)
		s        SMTP   // Addr filled with the server's when empty
		n        allot.Notification
		fail     int // smtptest.FailNext code
		wantPerm bool
	}{
		{name: "wrong password", user: "u", s: SMTP{Username: "u", Password: "wrong"}, n: good, wantPerm: true},
		{name: "auth required, none given", user: "u", n: good, wantPerm: true},
		{name: "auth not offered", s: SMTP{Username: "u", Password: "p"}, n: good, wantPerm: true},
		{name: "CRLF in To", n: with(func(n *allot.Notification) { n.To = "g@example.com\r\nBcc: victim@example.com" }), wantPerm: true},
		{name: "LF in Subject", n: with(func(n *allot.Notification) { n.Subject = "hi\nBcc: victim@example.com" }), wantPerm: true},
		{name: "CR in Subject", n: with(func(n *allot.Notification) { n.Subject = "hi\rthere" }), wantPerm: true},
		{name: "empty To", n: with(func(n *allot.Notification) { n.To = " " }), wantPerm: true},
		{name: "bad To", n: with(func(n *allot.Notification) { n.To = "not an address" }), wantPerm: true},
		{name: "empty Key", n: with(func(n *allot.Notification) { n.Key = "" }), wantPerm: true},
		{name: "bad From", s: SMTP{From: "nobody"}, n: good, wantPerm: true},
		{name: "554 on DATA", n: good, fail: 554, wantPerm: true},
		{name: "451 on DATA", n: good, fail: 451},
		{name: "server down", s: SMTP{Addr: downAddr}, n: good},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := startSMTP(t, tc.user, "p")
			if tc.fail != 0 {
				srv.FailNext(1, tc.fail)
			}
			s := tc.s
			if s.Addr == "" {
				s.Addr = srv.Addr()
			}
			if s.From == "" {
				s.From = "noreply@allot.example"
			}
			err := s.Notify(context.Background(), tc.n)
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, allot.ErrPermanent) != tc.wantPerm {
				t.Errorf("%v: permanent %v, want %v", err, !tc.wantPerm, tc.wantPerm)
			}
			if srv.Count() != 0 {
				t.Errorf("%d messages delivered", srv.Count())
			}
		})
	}
}

// A server that accepts and never answers: the session must end at ctx's
// deadline, or at Timeout, with a transient error.
func TestSMTPHonoursDeadlines(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	n := allot.Notification{Key: "k", To: "g@example.com", Subject: "s", Body: "b"}
	tests := []struct {
		name    string
		timeout time.Duration // SMTP.Timeout
		ctx     func() (context.Context, context.CancelFunc)
		wantIs  error
	}{
		{"ctx deadline", time.Minute, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
		{"ctx cancelled", time.Minute, func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"SMTP.Timeout", 100 * time.Millisecond, func() (context.Context, context.CancelFunc) {
			return context.WithCancel(context.Background())
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			err := SMTP{Addr: ln.Addr().String(), From: "a@b.example", Timeout: tc.timeout}.Notify(ctx, n)
			if err == nil || errors.Is(err, allot.ErrPermanent) {
				t.Fatalf("err = %v, want a transient error", err)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("%v is not %v", err, tc.wantIs)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}
