package notify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/allot/allot"
)

// forget drops what the process knows of path, as a new process would.
func forget(t *testing.T, path string) {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	filesMu.Lock()
	delete(files, abs)
	filesMu.Unlock()
}

// keysIn returns the key of every line of path, in order.
func keysIn(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var keys []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var n allot.Notification
		if err := json.Unmarshal(sc.Bytes(), &n); err != nil {
			keys = append(keys, "!"+sc.Text())
			continue
		}
		keys = append(keys, n.Key)
	}
	return keys
}

func note(key string) allot.Notification {
	return allot.Notification{Key: key, OrderID: "ord_" + key, To: "g@example.com", Subject: "s " + key, Body: "b"}
}

func TestFileOncePerKey(t *testing.T) {
	tests := []struct {
		name     string
		existing string   // file content before
		newProc  bool     // forget the process state between the two values
		sends    []string // keys, alternating between two File values
		want     []string // keys in the file after
	}{
		{name: "two values, one process", sends: []string{"a", "a", "b", "a", "b"}, want: []string{"a", "b"}},
		{name: "two values, a restart between", newProc: true, sends: []string{"a", "a", "b", "b"}, want: []string{"a", "b"}},
		{name: "keys already in the file", existing: `{"key":"a"}` + "\n" + `{"key":"b"}` + "\n", sends: []string{"a", "c", "b"}, want: []string{"a", "b", "c"}},
		{name: "torn last line is not a record", existing: `{"key":"a"}` + "\n" + `{"key":"b","ord`, sends: []string{"b", "a"}, want: []string{"a", `!{"key":"b","ord`, "b"}},
		{name: "whole record without newline counts", existing: `{"key":"a"}`, sends: []string{"a", "b"}, want: []string{"a", "b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "notifications.jsonl")
			if tc.existing != "" {
				if err := os.WriteFile(path, []byte(tc.existing), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			t.Cleanup(func() { forget(t, path) })
			values := []File{{Path: path}, {Path: filepath.Join(filepath.Dir(path), ".", "notifications.jsonl")}}
			for i, k := range tc.sends {
				if tc.newProc {
					forget(t, path)
				}
				if err := values[i%2].Notify(context.Background(), note(k)); err != nil {
					t.Fatal(err)
				}
			}
			if got := keysIn(t, path); strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("keys %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFileRecordAndMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.jsonl")
	t.Cleanup(func() { forget(t, path) })
	n := note("k")
	if err := (File{Path: path}).Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", info.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	var got allot.Notification
	if err := json.Unmarshal(b, &got); err != nil || got != n || bytes.Count(b, []byte("\n")) != 1 {
		t.Errorf("file %q: %+v, %v", b, got, err)
	}

	// A replaced file starts over.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := (File{Path: path}).Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	if got := keysIn(t, path); len(got) != 1 || got[0] != "k" {
		t.Errorf("after removal: %q", got)
	}
}

func TestFileConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.jsonl")
	t.Cleanup(func() { forget(t, path) })
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			if err := (File{Path: path}).Notify(context.Background(), note(fmt.Sprint(i%10))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got := keysIn(t, path)
	seen := map[string]int{}
	for _, k := range got {
		seen[k]++
	}
	if len(got) != 10 || len(seen) != 10 {
		t.Errorf("keys %q", got)
	}
}

func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name     string
		f        File
		n        allot.Notification
		wantPerm bool
	}{
		{"no path", File{}, note("k"), true},
		{"no key", File{Path: filepath.Join(dir, "a")}, note(""), true},
		{"unwritable", File{Path: filepath.Join(dir, "missing", "a")}, note("k"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.f.Notify(context.Background(), tc.n)
			if err == nil || errors.Is(err, allot.ErrPermanent) != tc.wantPerm {
				t.Errorf("err = %v, want permanent %v", err, tc.wantPerm)
			}
		})
	}
}

func TestLog(t *testing.T) {
	var buf bytes.Buffer
	l := Log{Logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	if err := l.Notify(context.Background(), note("k1")); err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("%q: %v", buf.Bytes(), err)
	}
	for k, want := range map[string]string{"level": "INFO", "key": "k1", "order_id": "ord_k1", "to": "g@example.com", "subject": "s k1"} {
		if rec[k] != want {
			t.Errorf("%s = %v, want %q", k, rec[k], want)
		}
	}

	// A nil Logger logs to slog.Default().
	var def bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&def, nil)))
	defer slog.SetDefault(old)
	if err := (Log{}).Notify(context.Background(), note("k2")); err != nil {
		t.Errorf("nil Logger: %v", err)
	}
	if !strings.Contains(def.String(), "key=k2") {
		t.Errorf("default logger got %q", def.String())
	}
}
