package notify

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/allot/allot"
)

// File appends each notification as one JSON line to the file at Path
// (created with mode 0600), at most once per Key: a Notify whose Key the file
// already holds is a no-op returning nil. Each line is written whole and
// fsynced before Notify returns.
//
// File values on the same path share one mutex and one set of written keys
// in the process; the set is filled from the file on first use and brought
// up to date with lines other processes appended before each write (which an
// advisory lock, where the platform has flock, serializes). A line torn by a
// crash counts only if it holds a whole record; otherwise its notification is
// written again.
type File struct {
	Path string
}

var _ allot.Notifier = File{}

// fileRecord is one line of the file.
type fileRecord struct {
	allot.Notification
	SentAt time.Time `json:"sent_at"`
}

// fileState is what the process knows of one file.
type fileState struct {
	mu   sync.Mutex
	keys map[string]struct{}
	info fs.FileInfo // the file scanned, to notice a replaced file
	off  int64       // the file is scanned up to here: complete lines only
}

var (
	filesMu sync.Mutex
	files   = map[string]*fileState{}
)

func stateFor(path string) (*fileState, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	filesMu.Lock()
	defer filesMu.Unlock()
	st := files[abs]
	if st == nil {
		st = &fileState{keys: map[string]struct{}{}}
		files[abs] = st
	}
	return st, nil
}

// Notify appends n unless its Key was written before.
func (f File) Notify(ctx context.Context, n allot.Notification) error {
	if f.Path == "" {
		return permanent("file notifier has no path")
	}
	if n.Key == "" {
		return permanent("notification for order %q has no key", n.OrderID)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	st, err := stateFor(f.Path)
	if err != nil {
		return fmt.Errorf("notify: file %s: %w", f.Path, err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := st.append(f.Path, n); err != nil {
		return fmt.Errorf("notify: file %s: %w", f.Path, err)
	}
	return nil
}

func (st *fileState) append(path string, n allot.Notification) error {
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, fs.ErrNotExist)
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close()
	if err := lockFile(fh); err != nil {
		return err
	}
	defer unlockFile(fh)

	torn, err := st.scan(fh)
	if err != nil {
		return err
	}
	if _, ok := st.keys[n.Key]; ok {
		return nil
	}
	line, err := json.Marshal(fileRecord{Notification: n, SentAt: time.Now().UTC()})
	if err != nil {
		return err
	}
	line = append(line, '\n')
	if torn {
		// End the torn line so that this record is a line of its own.
		line = append([]byte{'\n'}, line...)
	}
	if _, err := fh.Write(line); err != nil {
		return err
	}
	if err := fh.Sync(); err != nil {
		return err
	}
	if created {
		syncDir(filepath.Dir(path))
	}
	st.keys[n.Key] = struct{}{}
	// Past this line (and a torn one it ended) unless someone else wrote
	// too (possible only without flock): then the next scan reads from the
	// old offset again, finding this key already known.
	if info, err := fh.Stat(); err == nil && info.Size() == st.info.Size()+int64(len(line)) {
		st.off, st.info = info.Size(), info
	}
	return nil
}

// scan reads the complete lines appended since the last scan and adds their
// keys; it starts over when the file was truncated or replaced. It reports
// whether the file ends with an incomplete line.
func (st *fileState) scan(fh *os.File) (torn bool, err error) {
	info, err := fh.Stat()
	if err != nil {
		return false, err
	}
	if st.info == nil || !os.SameFile(st.info, info) || info.Size() < st.off {
		st.keys = map[string]struct{}{}
		st.off = 0
	}
	st.info = info
	r := bufio.NewReader(io.NewSectionReader(fh, st.off, info.Size()-st.off))
	for {
		line, err := r.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return false, err
		}
		// A torn last line counts when it holds a whole record (only its
		// newline is missing); st.off stays before it, so it is read again.
		var rec struct {
			Key string `json:"key"`
		}
		if json.Unmarshal(line, &rec) == nil && rec.Key != "" {
			st.keys[rec.Key] = struct{}{}
		}
		if err == io.EOF {
			return len(line) > 0, nil
		}
		st.off += int64(len(line))
	}
}

// syncDir makes a new file's directory entry durable, where the platform
// can (best effort).
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	d.Sync()
	d.Close()
}
