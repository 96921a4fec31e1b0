//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package notify

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive advisory lock on f, serializing File writers
// across processes.
func lockFile(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			return err
		}
	}
}

func unlockFile(f *os.File) { syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
