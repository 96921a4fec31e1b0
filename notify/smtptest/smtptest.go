// Package smtptest is a minimal in-process SMTP server for tests: it speaks
// enough of RFC 5321 for net/smtp (EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA,
// RSET, NOOP, QUIT), records every message it accepts, and can be told to
// refuse the next messages with a given reply code.
//
// It is not a _test.go file so that other packages' tests, and a crash-test
// parent process, can start one.
package smtptest

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/mail"
	"strings"
	"sync"
	"time"
)

// Limits of the server. A command line longer than MaxCommandLine is refused
// with 500; a text line of a message longer than MaxTextLine (RFC 5321
// 4.5.3.1.6: 1000 octets with the CRLF) or a message bigger than
// MaxMessageSize makes the whole message refused (500 and 552).
const (
	MaxCommandLine = 2048
	MaxTextLine    = 1000
	MaxMessageSize = 10 << 20
	MaxRecipients  = 100
	// IdleTimeout closes a connection that sends nothing for this long.
	IdleTimeout = 30 * time.Second
)

// Message is one message the server accepted.
type Message struct {
	From string   // the envelope sender (MAIL FROM), without angle brackets
	To   []string // the envelope recipients (RCPT TO), without angle brackets
	// Data is the message as sent, dot-stuffing undone, lines ending in CRLF,
	// without the terminating ".".
	Data []byte
	// MessageID is the Message-ID header as written, angle brackets
	// included ("<key@allot>"); empty when the header is missing or Data
	// does not parse as a message.
	MessageID string
	// Subject is the Subject header, RFC 2047 encoded words decoded.
	Subject string
}

// Server is a running test SMTP server. Its methods are safe for
// concurrent use.
type Server struct {
	ln       net.Listener
	username string
	password string

	mu       sync.Mutex
	msgs     []Message
	failN    int
	failCode int
	conns    map[net.Conn]struct{}
	closed   bool
	seq      int

	wg sync.WaitGroup
}

// Start listens on addr ("127.0.0.1:0" for a random port) and serves until
// Close. With a non-empty username, clients must AUTH PLAIN with username
// and password before MAIL.
func Start(addr, username, password string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("smtptest: listen: %w", err)
	}
	s := &Server{ln: ln, username: username, password: password, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops listening, closes every open connection and waits for the
// connections' goroutines to end. Messages stay readable.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// FailNext makes the next n messages be refused with code (e.g. 451 for a
// transient failure, 554 for a permanent one) as the reply to the end of
// their DATA, after the message was read; refused messages are not
// recorded. n <= 0 clears the injection.
func (s *Server) FailNext(n, code int) {
	if code < 400 || code > 599 {
		panic(fmt.Sprintf("smtptest: FailNext code %d is not a failure reply", code))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failN, s.failCode = max(n, 0), code
}

// Messages returns a copy of the accepted messages, in order of acceptance.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.msgs))
	for i, m := range s.msgs {
		m.To = append([]string(nil), m.To...)
		m.Data = append([]byte(nil), m.Data...)
		out[i] = m
	}
	return out
}

// Count is the number of accepted messages.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// CountByMessageID counts accepted messages per Message-ID header (as in
// Message.MessageID, angle brackets included); messages without one count
// under "".
func (s *Server) CountByMessageID() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.msgs))
	for _, m := range s.msgs {
		out[m.MessageID]++
	}
	return out
}

func (s *Server) accept() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient accept failure (e.g. too many open files).
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			(&session{srv: s, c: c, r: bufio.NewReaderSize(c, 4096), w: bufio.NewWriter(c)}).serve()
		}()
	}
}

// session is one client connection.
type session struct {
	srv *Server
	c   net.Conn
	r   *bufio.Reader
	w   *bufio.Writer

	helo   bool
	authed bool
	// The mail transaction: inMail after MAIL, rcpts after RCPT.
	inMail bool
	from   string
	rcpts  []string
}

var errLineTooLong = errors.New("line too long")

func (s *session) reply(code int, text string) error {
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		fmt.Fprintf(s.w, "%d%s%s\r\n", code, sep, l)
	}
	return s.w.Flush()
}

// readLine reads one line of at most limit octets (line ending included),
// without its CRLF (or bare LF). A longer line is consumed whole and
// reported as errLineTooLong.
func (s *session) readLine(limit int) (string, error) {
	if err := s.c.SetReadDeadline(time.Now().Add(IdleTimeout)); err != nil {
		return "", err
	}
	var buf []byte
	n := 0
	for {
		chunk, err := s.r.ReadSlice('\n')
		n += len(chunk)
		if n <= limit {
			buf = append(buf, chunk...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return "", err
		}
		break
	}
	if n > limit {
		return "", errLineTooLong
	}
	buf = bytes.TrimSuffix(buf, []byte("\n"))
	buf = bytes.TrimSuffix(buf, []byte("\r"))
	return string(buf), nil
}

func (s *session) reset() {
	s.inMail, s.from, s.rcpts = false, "", nil
}

func (s *session) serve() {
	if err := s.reply(220, "smtptest ESMTP ready"); err != nil {
		return
	}
	for {
		line, err := s.readLine(MaxCommandLine)
		if errors.Is(err, errLineTooLong) {
			if s.reply(500, "5.5.2 line too long") != nil {
				return
			}
			continue
		}
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		arg = strings.TrimSpace(arg)
		var quit bool
		switch strings.ToUpper(verb) {
		case "EHLO":
			err = s.ehlo(arg)
		case "HELO":
			err = s.heloCmd(arg)
		case "AUTH":
			err = s.auth(arg)
		case "MAIL":
			err = s.mail(arg)
		case "RCPT":
			err = s.rcpt(arg)
		case "DATA":
			err = s.data(arg)
		case "RSET":
			s.reset()
			err = s.reply(250, "2.0.0 ok")
		case "NOOP":
			err = s.reply(250, "2.0.0 ok")
		case "QUIT":
			s.reply(221, "2.0.0 bye")
			quit = true
		case "VRFY", "EXPN", "HELP", "STARTTLS", "TURN", "BDAT":
			err = s.reply(502, "5.5.1 command not implemented")
		default:
			err = s.reply(500, "5.5.2 command unrecognized")
		}
		if err != nil || quit {
			return
		}
	}
}

func (s *session) ehlo(arg string) error {
	if arg == "" {
		return s.reply(501, "5.5.4 EHLO needs a domain")
	}
	s.reset()
	s.helo = true
	lines := []string{"smtptest greets " + arg, "8BITMIME", fmt.Sprintf("SIZE %d", MaxMessageSize)}
	if s.srv.username != "" {
		lines = append(lines, "AUTH PLAIN")
	}
	return s.reply(250, strings.Join(lines, "\n"))
}

func (s *session) heloCmd(arg string) error {
	if arg == "" {
		return s.reply(501, "5.5.4 HELO needs a domain")
	}
	s.reset()
	s.helo = true
	return s.reply(250, "smtptest greets "+arg)
}

func (s *session) auth(arg string) error {
	switch {
	case !s.helo:
		return s.reply(503, "5.5.1 EHLO first")
	case s.srv.username == "":
		return s.reply(503, "5.5.1 authentication not enabled")
	case s.authed:
		return s.reply(503, "5.5.1 already authenticated")
	case s.inMail:
		return s.reply(503, "5.5.1 AUTH not allowed during a mail transaction")
	}
	mech, initial, hasInitial := strings.Cut(arg, " ")
	if !strings.EqualFold(mech, "PLAIN") {
		return s.reply(504, "5.5.4 unrecognized authentication type")
	}
	initial = strings.TrimSpace(initial)
	if !hasInitial || initial == "" {
		if err := s.reply(334, ""); err != nil {
			return err
		}
		line, err := s.readLine(MaxCommandLine)
		if errors.Is(err, errLineTooLong) {
			return s.reply(500, "5.5.2 line too long")
		}
		if err != nil {
			return err
		}
		initial = strings.TrimSpace(line)
	}
	if initial == "*" {
		return s.reply(501, "5.0.0 authentication cancelled")
	}
	// "=" stands for an empty initial response (RFC 4954).
	var raw []byte
	if initial != "=" {
		var err error
		if raw, err = base64.StdEncoding.DecodeString(initial); err != nil {
			return s.reply(501, "5.5.2 cannot decode response")
		}
	}
	parts := strings.Split(string(raw), "\x00")
	if len(parts) != 3 {
		return s.reply(501, "5.5.2 malformed PLAIN response")
	}
	authzid, user, pass := parts[0], parts[1], parts[2]
	okUser := subtle.ConstantTimeCompare([]byte(user), []byte(s.srv.username)) == 1
	okPass := subtle.ConstantTimeCompare([]byte(pass), []byte(s.srv.password)) == 1
	if !okUser || !okPass || (authzid != "" && authzid != user) {
		return s.reply(535, "5.7.8 authentication credentials invalid")
	}
	s.authed = true
	return s.reply(235, "2.7.0 authentication successful")
}

// mayTransact checks what MAIL, RCPT and DATA need in common: a greeting
// and, when required, authentication. It replies and reports false when
// they are missing.
func (s *session) mayTransact() (bool, error) {
	if !s.helo {
		return false, s.reply(503, "5.5.1 EHLO or HELO first")
	}
	if s.srv.username != "" && !s.authed {
		return false, s.reply(530, "5.7.0 authentication required")
	}
	return true, nil
}

// path parses `<prefix><address> [params]`, e.g. "FROM:<a@b> BODY=8BITMIME".
func path(arg, prefix string) (string, bool) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", false
	}
	rest := strings.TrimLeft(arg[len(prefix):], " ")
	if !strings.HasPrefix(rest, "<") {
		return "", false
	}
	end := strings.IndexByte(rest, '>')
	if end < 0 {
		return "", false
	}
	addr := rest[1:end]
	if strings.ContainsAny(addr, " <>") {
		return "", false
	}
	if params := rest[end+1:]; params != "" && params[0] != ' ' {
		return "", false
	}
	return addr, true
}

func (s *session) mail(arg string) error {
	if ok, err := s.mayTransact(); !ok {
		return err
	}
	if s.inMail {
		return s.reply(503, "5.5.1 nested MAIL command")
	}
	from, ok := path(arg, "FROM:")
	if !ok {
		return s.reply(501, "5.5.4 syntax: MAIL FROM:<address>")
	}
	s.inMail, s.from = true, from
	return s.reply(250, "2.1.0 ok")
}

func (s *session) rcpt(arg string) error {
	if ok, err := s.mayTransact(); !ok {
		return err
	}
	if !s.inMail {
		return s.reply(503, "5.5.1 need MAIL before RCPT")
	}
	to, ok := path(arg, "TO:")
	if !ok || to == "" {
		return s.reply(501, "5.5.4 syntax: RCPT TO:<address>")
	}
	if len(s.rcpts) >= MaxRecipients {
		return s.reply(452, "4.5.3 too many recipients")
	}
	s.rcpts = append(s.rcpts, to)
	return s.reply(250, "2.1.5 ok")
}

func (s *session) data(arg string) error {
	if ok, err := s.mayTransact(); !ok {
		return err
	}
	if arg != "" {
		return s.reply(501, "5.5.4 DATA takes no argument")
	}
	if !s.inMail || len(s.rcpts) == 0 {
		return s.reply(503, "5.5.1 need RCPT before DATA")
	}
	if err := s.reply(354, "end data with <CR><LF>.<CR><LF>"); err != nil {
		return err
	}
	var body bytes.Buffer
	tooLong, tooBig := false, false
	for {
		line, err := s.readLine(MaxTextLine)
		if errors.Is(err, errLineTooLong) {
			tooLong = true
			continue
		}
		if err != nil {
			return err
		}
		if line == "." {
			break
		}
		line = strings.TrimPrefix(line, ".") // undo dot-stuffing
		if body.Len()+len(line)+2 > MaxMessageSize {
			tooBig = true
			continue
		}
		body.WriteString(line)
		body.WriteString("\r\n")
	}
	from, rcpts := s.from, s.rcpts
	s.reset()
	switch {
	case tooLong:
		return s.reply(500, "5.5.2 line too long")
	case tooBig:
		return s.reply(552, "5.3.4 message too big")
	}

	srv := s.srv
	srv.mu.Lock()
	if srv.failN > 0 {
		srv.failN--
		code := srv.failCode
		srv.mu.Unlock()
		return s.reply(code, fmt.Sprintf("%d.0.0 injected failure", code/100))
	}
	m := Message{From: from, To: rcpts, Data: body.Bytes()}
	if pm, err := mail.ReadMessage(bytes.NewReader(m.Data)); err == nil {
		m.MessageID = strings.TrimSpace(pm.Header.Get("Message-ID"))
		m.Subject = pm.Header.Get("Subject")
		if dec, err := new(mime.WordDecoder).DecodeHeader(m.Subject); err == nil {
			m.Subject = dec
		}
	}
	srv.msgs = append(srv.msgs, m)
	srv.seq++
	id := srv.seq
	srv.mu.Unlock()
	return s.reply(250, fmt.Sprintf("2.0.0 ok: queued as %d", id))
}
