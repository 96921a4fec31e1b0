package postgres

import (
	"context"
	"errors"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/store/postgres/pgtest"
)

// cutProxy forwards TCP connections to PostgreSQL until it is armed. Once
// armed, the connections open then stop answering the client: what the
// client sends next is delivered to the server or dropped (deliver), and
// after a moment the client's side is cut; the server's side is cut too,
// unless hang. Connections opened later are forwarded as usual, unless
// refuse.
type cutProxy struct {
	ln       net.Listener
	upstream string
	mu       sync.Mutex
	conns    []*proxied
	refuse   bool
}

type proxied struct {
	client, server net.Conn
	mu             sync.Mutex
	armed          bool
	deliver        bool
	hang           bool
}

func newCutProxy(t *testing.T, upstream string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, upstream: upstream}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.client.Close()
			c.server.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			refuse := p.refuse
			p.mu.Unlock()
			if refuse {
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			pc := &proxied{client: c, server: u}
			p.mu.Lock()
			p.conns = append(p.conns, pc)
			p.mu.Unlock()
			go pc.pipe(c, u, true)
			go pc.pipe(u, c, false)
		}
	}()
	return p
}

// pipe copies src to dst; toServer says which way it runs.
func (c *proxied) pipe(src, dst net.Conn, toServer bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			c.mu.Lock()
			pass := !c.armed || (toServer && c.deliver)
			c.mu.Unlock()
			if pass {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			// One side ended: end the other, as a network would, but for
			// the server's side of a connection left hanging.
			c.mu.Lock()
			keep := toServer && c.hang
			c.mu.Unlock()
			if !keep {
				dst.Close()
			}
			return
		}
	}
}

// arm makes the open connections stop answering, then cuts them.
func (p *cutProxy) arm(deliver, hang, refuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = refuse
	for _, c := range p.conns {
		c.mu.Lock()
		c.armed, c.deliver, c.hang = true, deliver, hang
		c.mu.Unlock()
		go func() {
			time.Sleep(300 * time.Millisecond)
			c.client.Close()
			if !hang {
				c.server.Close()
			}
		}()
	}
}

// A COMMIT whose answer is lost: Write asks the server what became of the
// transaction, and reports a commit as a success, a rollback as a failure,
// and only what it cannot find out as allot.ErrOutcomeUnknown.
func TestLostCommitAnswer(t *testing.T) {
	base := pgtest.URL(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	upstream := u.Host
	if u.Port() == "" {
		upstream = net.JoinHostPort(u.Hostname(), "5432")
	}
	old := commitResolveTimeout
	commitResolveTimeout = 3 * time.Second
	t.Cleanup(func() { commitResolveTimeout = old })

	cases := []struct {
		name                  string
		deliver, hang, refuse bool
		waiters               int  // writers that queue for the transaction's lock, filling the pool
		ok                    bool // Write succeeds
		unknown               bool // Write says the outcome is unknown
		committed             bool // what really happened
	}{
		{name: "COMMIT reached the server", deliver: true, ok: true, committed: true},
		{name: "COMMIT lost, server side closed"},
		{name: "COMMIT lost, server process left waiting", hang: true},
		{name: "COMMIT lost, server process left waiting, pool full of writers waiting on it", hang: true, waiters: 2},
		{name: "COMMIT reached the server, server unreachable since", deliver: true, refuse: true, unknown: true, committed: true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			schema := pgtest.Schema(t, base)
			p := newCutProxy(t, upstream)
			pu := *u
			pu.Host = p.ln.Addr().String()
			// One connection: the transaction's, so that arming cuts it
			// alone, and Write must give it back before it can ask.
			s, err := Open(ctx, pu.String(), Options{Schema: schema, MaxConns: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			id := "r" + string(rune('a'+i))
			// A first transaction prepares BEGIN and COMMIT on the
			// connection, as on any connection in use: the cut then falls
			// on COMMIT itself, not on preparing it.
			if err := s.Write(ctx, func(tx allot.Tx) error { _, err := tx.GetResource(ctx, "none"); return ignoreNotFound(err) }); err != nil {
				t.Fatal(err)
			}
			var waiters sync.WaitGroup
			err = s.Write(ctx, func(tx allot.Tx) error {
				if err := tx.InsertResource(ctx, allot.Resource{ID: id, Name: id, Kind: allot.KindStock, Capacity: 1, CreatedAt: time.Now()}); err != nil {
					return err
				}
				// A read sends what is queued (and the transaction id).
				if _, err := tx.GetResource(ctx, id); err != nil {
					return err
				}
				p.arm(tc.deliver, tc.hang, tc.refuse)
				for range tc.waiters {
					waiters.Go(func() {
						// The same key as the transaction's insert: this
						// waits until that transaction ends, then undoes.
						wtx, err := s.pool.Begin(ctx)
						if err != nil {
							t.Error(err)
							return
						}
						defer wtx.Rollback(ctx)
						if _, err := wtx.Exec(ctx, `INSERT INTO resources (id, name, kind, capacity, created_at) VALUES ($1, 'w', 'stock', 1, now())`, id); err != nil {
							t.Error(err)
						}
					})
				}
				return nil
			})
			if !waitFor(&waiters, 20*time.Second) {
				t.Fatal("writers still wait on the transaction's locks: it never ended")
			}
			switch {
			case tc.ok && err != nil:
				t.Fatalf("Write = %v; the transaction committed", err)
			case !tc.ok && err == nil:
				t.Fatal("Write succeeded; the transaction never committed")
			case tc.unknown != errors.Is(err, allot.ErrOutcomeUnknown):
				t.Fatalf("Write = %v; outcome unknown: want %v", err, tc.unknown)
			}
			if tc.refuse {
				p.mu.Lock()
				p.refuse = false
				p.mu.Unlock()
			}
			// Write's answer must match what happened.
			var rerr error
			for range 50 { // the server may still be finishing the commit
				if _, rerr = s.GetResource(ctx, id); rerr == nil || !tc.committed {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if tc.committed != (rerr == nil) {
				t.Fatalf("resource committed: %v, want %v (read: %v)", rerr == nil, tc.committed, rerr)
			}
			// The store still works.
			if err := s.Write(ctx, func(tx allot.Tx) error {
				return tx.InsertResource(ctx, allot.Resource{ID: id + "2", Name: id, Kind: allot.KindStock, Capacity: 1, CreatedAt: time.Now()})
			}); err != nil {
				t.Fatalf("Write after the cut: %v", err)
			}
		})
	}
}

func ignoreNotFound(err error) error {
	if errors.Is(err, allot.ErrNotFound) {
		return nil
	}
	return err
}

// waitFor waits for wg, for at most d.
func waitFor(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
