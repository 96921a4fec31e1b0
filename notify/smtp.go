// Package notify delivers customer notifications (allot.Notifier): by SMTP,
// to a JSON-lines file, or to the log for development.
//
// Every notification carries a Key that is stable per order and step; SMTP
// sends it as the Message-ID, so a resend after a crash is the same message
// and receivers can drop the duplicate, and File writes each Key at most once.
package notify

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"strings"
	"time"

	"github.com/allot/allot"
)

// DefaultTimeout bounds an SMTP delivery when SMTP.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// SMTP sends each notification as one plain-text email through an SMTP
// server. It uses STARTTLS when the server offers it and AUTH PLAIN when
// Username is set (net/smtp sends the password only over TLS or to
// localhost).
//
// Errors: an invalid notification (empty Key or To, an unparsable address,
// CR or LF in To or Subject) and a 5xx reply wrap allot.ErrPermanent; 4xx
// replies, network errors and ctx expiry are transient.
type SMTP struct {
	Addr     string // host:port
	Username string
	Password string
	From     string // the sender, "Name <addr>" or "addr"
	// Timeout bounds the dial and the whole session (default
	// DefaultTimeout); ctx's deadline applies when earlier.
	Timeout time.Duration
}

var _ allot.Notifier = SMTP{}

// MessageID is the Message-ID header SMTP writes for a notification key:
// "<" + key + "@allot>", the key's characters outside [A-Za-z0-9._-]
// replaced by '-' (and a '.' at either end or after another '.' too, so
// that the id is a valid dot-atom).
func MessageID(key string) string {
	b := []byte(key)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '.' && i > 0 && i < len(b)-1 && b[i-1] != '.':
		default:
			b[i] = '-'
		}
	}
	return "<" + string(b) + "@allot>"
}

func permanent(format string, args ...any) error {
	return fmt.Errorf("notify: %w: %s", allot.ErrPermanent, fmt.Sprintf(format, args...))
}

// message builds the RFC 5322 message and returns it with the envelope
// sender and recipient.
func (s SMTP) message(n allot.Notification, now time.Time) (msg []byte, from, to string, err error) {
	if n.Key == "" {
		return nil, "", "", permanent("notification for order %q has no key", n.OrderID)
	}
	if strings.TrimSpace(n.To) == "" {
		return nil, "", "", permanent("notification %q has no recipient", n.Key)
	}
	if strings.ContainsAny(n.To, "\r\n") || strings.ContainsAny(n.Subject, "\r\n") {
		return nil, "", "", permanent("notification %q: CR or LF in To or Subject", n.Key)
	}
	toAddr, err := mail.ParseAddress(n.To)
	if err != nil {
		return nil, "", "", permanent("notification %q: recipient %q: %v", n.Key, n.To, err)
	}
	if strings.ContainsAny(s.From, "\r\n") {
		return nil, "", "", permanent("sender: CR or LF in From")
	}
	fromAddr, err := mail.ParseAddress(s.From)
	if err != nil {
		return nil, "", "", permanent("sender %q: %v", s.From, err)
	}

	var b bytes.Buffer
	header := func(k, v string) { b.WriteString(fold(k+": "+v) + "\r\n") }
	header("From", fromAddr.String())
	header("To", toAddr.String())
	header("Subject", mime.QEncoding.Encode("utf-8", n.Subject))
	header("Date", now.Format(time.RFC1123Z))
	header("Message-ID", MessageID(n.Key))
	header("MIME-Version", "1.0")
	header("Content-Type", "text/plain; charset=utf-8")

	body := crlf(n.Body)
	if sevenBit(body) {
		header("Content-Transfer-Encoding", "7bit")
		b.WriteString("\r\n")
		b.WriteString(body)
	} else {
		// 8-bit text or lines too long for SMTP (998 octets): quoted-printable
		// travels through any server.
		header("Content-Transfer-Encoding", "quoted-printable")
		b.WriteString("\r\n")
		w := quotedprintable.NewWriter(&b)
		w.Write([]byte(body))
		w.Close()
		if !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
			b.WriteString("\r\n")
		}
	}
	return b.Bytes(), fromAddr.Address, toAddr.Address, nil
}

// fold folds a header line longer than 78 octets at spaces (RFC 5322
// 2.2.3); a word longer than that stays whole.
func fold(line string) string {
	if len(line) <= 78 {
		return line
	}
	var b strings.Builder
	n := 0
	for i, w := range strings.Split(line, " ") {
		if i > 0 {
			if n+1+len(w) > 78 {
				b.WriteString("\r\n")
				n = 0
			}
			b.WriteByte(' ')
			n++
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}

// crlf normalizes line endings to CRLF and ends the text with one.
func crlf(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// sevenBit reports whether a CRLF text is ASCII without NUL, with no line
// longer than 998 octets.
func sevenBit(s string) bool {
	for line := range strings.SplitSeq(s, "\r\n") {
		if len(line) > 998 {
			return false
		}
		for i := 0; i < len(line); i++ {
			if line[i] == 0 || line[i] >= 0x80 {
				return false
			}
		}
	}
	return true
}

// Notify sends n. See SMTP for which errors are permanent.
func (s SMTP) Notify(ctx context.Context, n allot.Notification) error {
	msg, from, to, err := s.message(n, time.Now())
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(s.Addr)
	if err != nil {
		return permanent("smtp address %q: %v", s.Addr, err)
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}

	dialer := net.Dialer{Deadline: deadline}
	conn, err := dialer.DialContext(ctx, "tcp", s.Addr)
	if err != nil {
		return s.fail(ctx, "dial", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return s.fail(ctx, "dial", err)
	}
	// Cancelling ctx interrupts whatever the session is blocked on.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	c, err := smtp.NewClient(conn, host)
	if err != nil {
		return s.fail(ctx, "greeting", err)
	}
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		return s.fail(ctx, "hello", err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		if err := c.StartTLS(&tls.Config{ServerName: host}); err != nil {
			return s.fail(ctx, "starttls", err)
		}
	}
	if s.Username != "" {
		if ok, _ := c.Extension("AUTH"); !ok {
			return permanent("smtp %s: server does not offer AUTH", s.Addr)
		}
		if _, isTLS := c.TLSConnectionState(); !isTLS && !isLocalhost(host) {
			return permanent("smtp %s: refusing to send credentials without TLS", s.Addr)
		}
		if err := c.Auth(smtp.PlainAuth("", s.Username, s.Password, host)); err != nil {
			return s.fail(ctx, "auth", err)
		}
	}
	if err := c.Mail(from); err != nil {
		return s.fail(ctx, "MAIL FROM", err)
	}
	if err := c.Rcpt(to); err != nil {
		return s.fail(ctx, "RCPT TO", err)
	}
	w, err := c.Data()
	if err != nil {
		return s.fail(ctx, "DATA", err)
	}
	if _, err := w.Write(msg); err != nil {
		return s.fail(ctx, "DATA", err)
	}
	if err := w.Close(); err != nil {
		return s.fail(ctx, "end of DATA", err)
	}
	// The message is accepted; a failed QUIT changes nothing.
	_ = c.Quit()
	return nil
}

func isLocalhost(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

// fail classifies err: a 5xx reply is permanent, anything else transient.
func (s SMTP) fail(ctx context.Context, stage string, err error) error {
	var tp *textproto.Error
	if errors.As(err, &tp) && tp.Code >= 500 && tp.Code <= 599 {
		return fmt.Errorf("notify: smtp %s %s: %w: %w", s.Addr, stage, allot.ErrPermanent, err)
	}
	ctxErr := context.Cause(ctx)
	if d, ok := ctx.Deadline(); ctxErr == nil && ok && !time.Now().Before(d) {
		// The connection's deadline, which is ctx's, fired before ctx's timer.
		ctxErr = context.DeadlineExceeded
	}
	if ctxErr != nil {
		return fmt.Errorf("notify: smtp %s %s: %w (%w)", s.Addr, stage, ctxErr, err)
	}
	return fmt.Errorf("notify: smtp %s %s: %w", s.Addr, stage, err)
}
