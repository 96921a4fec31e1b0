package smtptest

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"
)

func start(t *testing.T, user, pass string) *Server {
	t.Helper()
	s, err := Start("127.0.0.1:0", user, pass)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func message(id, subject, body string) []byte {
	return []byte("From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject +
		"\r\nMessage-ID: " + id + "\r\n\r\n" + body)
}

// code is the SMTP reply code of err, or 0.
func code(err error) int {
	var tp *textproto.Error
	if errors.As(err, &tp) {
		return tp.Code
	}
	return 0
}

func TestSendMail(t *testing.T) {
	tests := []struct {
		name       string
		user, pass string // server
		auth       smtp.Auth
		wantCode   int
	}{
		{name: "no auth configured", auth: nil},
		{name: "auth ok", user: "u", pass: "p", auth: smtp.PlainAuth("", "u", "p", "127.0.0.1")},
		{name: "auth with authzid", user: "u", pass: "p", auth: smtp.PlainAuth("u", "u", "p", "127.0.0.1")},
		{name: "wrong password", user: "u", pass: "p", auth: smtp.PlainAuth("", "u", "x", "127.0.0.1"), wantCode: 535},
		{name: "wrong user", user: "u", pass: "p", auth: smtp.PlainAuth("", "v", "p", "127.0.0.1"), wantCode: 535},
		{name: "auth required but not done", user: "u", pass: "p", auth: nil, wantCode: 530},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, tc.user, tc.pass)
			body := "line 1\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n"
			msg := message("<m1@allot>", "=?utf-8?q?h=C3=A9llo?=", body)
			err := smtp.SendMail(s.Addr(), tc.auth, "a@example.com", []string{"b@example.com", "c@example.com"}, msg)
			if code(err) != tc.wantCode || (tc.wantCode == 0 && err != nil) {
				t.Fatalf("SendMail: %v, want code %d", err, tc.wantCode)
			}
			if tc.wantCode != 0 {
				if s.Count() != 0 {
					t.Fatalf("Count = %d after a refusal", s.Count())
				}
				return
			}
			ms := s.Messages()
			if len(ms) != 1 {
				t.Fatalf("got %d messages", len(ms))
			}
			m := ms[0]
			if m.From != "a@example.com" || strings.Join(m.To, ",") != "b@example.com,c@example.com" {
				t.Errorf("envelope %q -> %q", m.From, m.To)
			}
			if m.MessageID != "<m1@allot>" || m.Subject != "héllo" {
				t.Errorf("MessageID %q Subject %q", m.MessageID, m.Subject)
			}
			if want := string(msg); string(m.Data) != want {
				t.Errorf("Data\n%q\nwant\n%q", m.Data, want)
			}
			if got := s.CountByMessageID(); got["<m1@allot>"] != 1 || len(got) != 1 {
				t.Errorf("CountByMessageID = %v", got)
			}
		})
	}
}

// dial opens a raw protocol connection and reads the greeting.
func dial(t *testing.T, s *Server) *textproto.Conn {
	t.Helper()
	c, err := textproto.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, _, err := c.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestProtocol(t *testing.T) {
	plain := func(user, pass string) string {
		return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	}
	type step struct {
		send string
		want int
	}
	tests := []struct {
		name       string
		user, pass string
		steps      []step
		wantCount  int
	}{
		{name: "unknown command", steps: []step{{"FOO", 500}, {"VRFY x", 502}, {"NOOP", 250}, {"QUIT", 221}}},
		{name: "mail before helo", steps: []step{{"MAIL FROM:<a@b>", 503}}},
		{name: "rcpt before mail", steps: []step{{"EHLO x", 250}, {"RCPT TO:<a@b>", 503}}},
		{name: "data before rcpt", steps: []step{{"EHLO x", 250}, {"MAIL FROM:<a@b>", 250}, {"DATA", 503}}},
		{name: "nested mail", steps: []step{{"HELO x", 250}, {"MAIL FROM:<a@b>", 250}, {"MAIL FROM:<a@b>", 503}}},
		{name: "rset clears transaction", steps: []step{{"HELO x", 250}, {"MAIL FROM:<a@b>", 250}, {"RSET", 250}, {"RCPT TO:<c@d>", 503}, {"MAIL FROM:<a@b>", 250}}},
		{name: "bad syntax", steps: []step{{"EHLO", 501}, {"EHLO x", 250}, {"MAIL TO:<a@b>", 501}, {"MAIL FROM:a@b", 501}, {"MAIL FROM:<> BODY=8BITMIME", 250}, {"RCPT TO:<>", 501}}},
		{name: "auth needed", user: "u", pass: "p", steps: []step{{"EHLO x", 250}, {"MAIL FROM:<a@b>", 530}, {"AUTH LOGIN", 504}}},
		{name: "auth inline", user: "u", pass: "p", steps: []step{{"EHLO x", 250}, {"AUTH PLAIN " + plain("u", "p"), 235}, {"AUTH PLAIN " + plain("u", "p"), 503}, {"MAIL FROM:<a@b>", 250}}},
		{name: "auth continuation", user: "u", pass: "p", steps: []step{{"EHLO x", 250}, {"AUTH PLAIN", 334}, {plain("u", "p"), 235}, {"MAIL FROM:<a@b>", 250}}},
		{name: "auth continuation bad", user: "u", pass: "p", steps: []step{{"EHLO x", 250}, {"AUTH PLAIN", 334}, {plain("u", "q"), 535}, {"MAIL FROM:<a@b>", 530}}},
		{name: "auth cancelled", user: "u", pass: "p", steps: []step{{"EHLO x", 250}, {"AUTH PLAIN", 334}, {"*", 501}}},
		{name: "auth garbage", user: "u", pass: "p", steps: []step{{"EHLO x", 250}, {"AUTH PLAIN !!!", 501}, {"AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("nonul")), 501}}},
		{name: "auth before ehlo", user: "u", pass: "p", steps: []step{{"AUTH PLAIN " + plain("u", "p"), 503}}},
		{name: "auth not enabled", steps: []step{{"EHLO x", 250}, {"AUTH PLAIN " + plain("u", "p"), 503}}},
		{name: "long command line", steps: []step{{"NOOP " + strings.Repeat("x", MaxCommandLine), 500}, {"NOOP", 250}}},
		{name: "message", steps: []step{{"HELO x", 250}, {"MAIL FROM:<a@b>", 250}, {"RCPT TO:<c@d>", 250}, {"DATA", 354}, {"Subject: s\r\n\r\n..dot\r\n.", 250}, {"MAIL FROM:<a@b>", 250}}, wantCount: 1},
		{name: "message with long line", steps: []step{{"HELO x", 250}, {"MAIL FROM:<a@b>", 250}, {"RCPT TO:<c@d>", 250}, {"DATA", 354}, {strings.Repeat("x", MaxTextLine) + "\r\n.", 500}, {"NOOP", 250}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, tc.user, tc.pass)
			c := dial(t, s)
			for _, st := range tc.steps {
				if err := c.PrintfLine("%s", st.send); err != nil {
					t.Fatal(err)
				}
				got, msg, err := c.ReadResponse(0)
				if got != st.want {
					t.Fatalf("%.40q: got %d %q (%v), want %d", st.send, got, msg, err, st.want)
				}
			}
			if s.Count() != tc.wantCount {
				t.Errorf("Count = %d, want %d", s.Count(), tc.wantCount)
			}
		})
	}
}

func TestEHLOAdvertisesAuth(t *testing.T) {
	for _, tc := range []struct {
		user     string
		wantAuth bool
	}{{"", false}, {"u", true}} {
		s := start(t, tc.user, "p")
		c, err := smtp.Dial(s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello("x"); err != nil {
			t.Fatal(err)
		}
		ok, params := c.Extension("AUTH")
		if ok != tc.wantAuth || (ok && params != "PLAIN") {
			t.Errorf("user %q: AUTH %v %q", tc.user, ok, params)
		}
		if ok, _ := c.Extension("STARTTLS"); ok {
			t.Error("STARTTLS advertised")
		}
		c.Quit()
	}
}

func TestFailNext(t *testing.T) {
	tests := []struct {
		name string
		n    int
		code int
	}{
		{"transient", 2, 451},
		{"permanent", 1, 554},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, "", "")
			s.FailNext(tc.n, tc.code)
			for i := range tc.n {
				err := smtp.SendMail(s.Addr(), nil, "a@b", []string{"c@d"}, message(fmt.Sprintf("<f%d@x>", i), "s", "b\r\n"))
				if code(err) != tc.code {
					t.Fatalf("send %d: %v, want %d", i, err, tc.code)
				}
			}
			if err := smtp.SendMail(s.Addr(), nil, "a@b", []string{"c@d"}, message("<ok@x>", "s", "b\r\n")); err != nil {
				t.Fatalf("after injected failures: %v", err)
			}
			if got := s.CountByMessageID(); len(got) != 1 || got["<ok@x>"] != 1 {
				t.Errorf("CountByMessageID = %v", got)
			}
		})
	}
}

func TestConcurrent(t *testing.T) {
	s := start(t, "u", "p")
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			auth := smtp.PlainAuth("", "u", "p", "127.0.0.1")
			errs <- smtp.SendMail(s.Addr(), auth, "a@b", []string{"c@d"}, message(fmt.Sprintf("<c%d@x>", i%10), "s", "b\r\n"))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	counts := s.CountByMessageID()
	if s.Count() != n || len(counts) != 10 {
		t.Fatalf("Count %d, ids %v", s.Count(), counts)
	}
	for id, c := range counts {
		if c != n/10 {
			t.Errorf("%s: %d", id, c)
		}
	}
}

func TestCloseWithOpenConnections(t *testing.T) {
	s, err := Start("127.0.0.1:0", "", "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked on an open connection")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Fatal("still accepting after Close")
	}
}
