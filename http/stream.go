package http

import (
	"fmt"
	nethttp "net/http"
	"strconv"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/events"
)

// streamPoll is how often an idle stream looks for new events;
// streamHeartbeat how often it proves the connection alive.
const (
	streamPoll      = 200 * time.Millisecond
	streamHeartbeat = 15 * time.Second
	// streamWrite bounds one write to a client: one that stops reading is
	// dropped, not waited for.
	streamWrite = 10 * time.Second
	// MaxStreams bounds the streams open at once; each polls the store.
	MaxStreams = 256
)

// eventStream serves the outbox as Server-Sent Events: each event once, in
// change-number order, its change number as the SSE id, so a client that
// reconnects with Last-Event-ID (or ?after=) resumes where it stopped.
func (s *Server) eventStream(w nethttp.ResponseWriter, r *nethttp.Request) {
	fail := func(err error) { writeProblem(w, err, r.URL.Path) }
	if err := checkURL(r); err != nil {
		fail(err)
		return
	}
	if s.streams.Add(1) > MaxStreams {
		s.streams.Add(-1)
		w.Header().Set("Retry-After", "5")
		fail(&allot.Error{Code: codeUnavailable, Line: -1, Detail: fmt.Sprintf("%d event streams are open, the most this server keeps; retry later", MaxStreams)})
		return
	}
	defer s.streams.Add(-1)
	var after int64
	from, field := r.Header.Get("Last-Event-ID"), "Last-Event-ID"
	if from == "" {
		from, field = r.URL.Query().Get("after"), "after"
	}
	if from != "" {
		n, err := strconv.ParseInt(from, 10, 64)
		if err != nil || n < 0 {
			fail(allot.Invalid(field, "%s must be the id of an event received (a non-negative integer), got %q", field, from))
			return
		}
		after = n
	}
	rc := nethttp.NewResponseController(w)
	// The server's write timeout is for requests; a stream lives on, each
	// write with a deadline of its own.
	_ = rc.SetWriteDeadline(time.Now().Add(streamWrite))
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(200)
	fmt.Fprint(w, ": allot event stream\n\n")
	if rc.Flush() != nil {
		return
	}
	ctx := r.Context()
	store := s.eng.Store()
	poll := time.NewTicker(streamPoll)
	defer poll.Stop()
	lastWrite := time.Now()
	for {
		evs, err := store.EventsAfterChange(ctx, after, 500)
		if err != nil {
			if ctx.Err() == nil {
				s.log.ErrorContext(ctx, "reading events for a stream", "err", err)
				fmt.Fprintf(w, "event: error\ndata: {\"detail\":\"reading events failed; reconnect with Last-Event-ID %d\"}\n\n", after)
				rc.Flush()
			}
			return
		}
		for _, ev := range evs {
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.ChangeNo, ev.Type, events.Message(ev))
			after = ev.ChangeNo
		}
		if len(evs) > 0 || time.Since(lastWrite) > streamHeartbeat {
			_ = rc.SetWriteDeadline(time.Now().Add(streamWrite))
			if len(evs) == 0 {
				fmt.Fprint(w, ": heartbeat\n\n")
			}
			if rc.Flush() != nil {
				return
			}
			lastWrite = time.Now()
		}
		if len(evs) == 500 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-s.closing:
			return // the server is shutting down: the client reconnects elsewhere
		case <-poll.C:
		}
	}
}
