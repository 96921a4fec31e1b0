//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package notify

import "os"

// lockFile is a no-op where flock is missing: File writers are serialized
// within the process only.
func lockFile(*os.File) error { return nil }

func unlockFile(*os.File) {}
