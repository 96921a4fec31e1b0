// Package pgtest gives tests an isolated PostgreSQL schema, or skips them
// when no server is reachable (unless ALLOT_REQUIRE_SERVICES=1).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultURL is the test database when ALLOT_TEST_POSTGRES is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// URL returns the test database URL, skipping (or failing, when services are
// required) if it cannot be reached.
func URL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("ALLOT_TEST_POSTGRES")
	if url == "" {
		url = DefaultURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		if os.Getenv("ALLOT_REQUIRE_SERVICES") == "1" {
			t.Fatalf("PostgreSQL at %s is required (ALLOT_REQUIRE_SERVICES=1) but unreachable: %v", url, err)
		}
		t.Skipf("PostgreSQL at %s unreachable (%v); set ALLOT_TEST_POSTGRES or start it to run this test", url, err)
	}
	conn.Close(ctx)
	return url
}

// Schema returns a fresh schema name and drops the schema when the test ends.
func Schema(t testing.TB, url string) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "allot_test_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, url); err == nil {
			_, _ = conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{name}.Sanitize()+` CASCADE`)
			conn.Close(ctx)
		}
	})
	return name
}
